"""Stage sync_mlflow: the MLflow store shows what DVC holds (see mnistgen.tracking.reconcile).

DVC runs it at the end of every `dvc repro` / `dvc exp run` (`always_changed`), because
what the store must show changes even when DVC runs nothing: a fresh clone whose committed
metrics make DVC skip `evaluate`, outputs restored from the run cache or by `dvc pull`, a
new store. It first sends what a tracking outage held back, then records what is missing:
training runs for checkpoints no run here trained, evaluate's scores on the training runs,
their models and the pipeline run, and `@champion`. Nothing missing: nothing written.

Usage: python -m stages.sync_mlflow --data data/mnist.npz --judge models/judge.pt \
    --inverted models/inverted --gan models/gan.pt --samples samples --figures figures \
    --gan-losses plots/gan_losses.csv --gan-quality plots/gan_quality.csv \
    --inverted-losses plots/inverted_loss.csv --judge-metrics metrics/judge.json \
    --scores metrics/evaluate.json
"""
from __future__ import annotations

import sys
from pathlib import Path

from mnistgen.params import load_section
from mnistgen.stage import parse_args, run
from mnistgen.tracking import reconcile, runs, store
from mnistgen.tracking.settings import TrackingParams

PATHS = ["data", "judge", "inverted", "gan", "samples", "figures", "gan_losses", "gan_quality",
         "inverted_losses", "judge_metrics", "scores"]


def main(argv=None):
    args = parse_args(__doc__, PATHS, argv)
    settings = load_section(args.params, "tracking", TrackingParams)
    workspace = reconcile.Workspace(**{name: Path(getattr(args, name)) for name in PATHS})
    uri = store.tracking_uri()
    store.check_store(uri)
    client = store.open_client(uri)
    with store.store_lock(uri), store.one_line_errors(uri, "the store was brought in step"):
        experiment_id = runs.prepare_store(client, uri)
        done = reconcile.reconcile(client, experiment_id, workspace, settings)
    for line in done:
        print(f"sync_mlflow: {line}")
    if not done:
        print(f"sync_mlflow: {uri} already shows the current outputs")


if __name__ == "__main__":
    sys.exit(run("sync_mlflow", main, dvc_removes_outputs=False))  # it has no outputs
