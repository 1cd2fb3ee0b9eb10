"""Stage evaluate: the judge scores real test digits (the reference row) and every
generator's samples (see mnistgen.scoring); one MLflow run with every row, linked to the
runs and checkpoints it scored. Calibration rows: the real test digits under harmless and
harmful changes (mnistgen.transforms), scored the same way. The scores reach the runs that
trained the generators, and the `champion` alias moves, in `sync_mlflow` (which DVC runs
even when it skips this stage).

Usage: python -m stages.evaluate --data data/mnist.npz --judge models/judge.pt \
    --samples samples --figures figures --summary metrics/evaluate.json \
    --per-class metrics/per_class.json --calibration metrics/calibration.json
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from mnistgen.data import load_arrays
from mnistgen.judging import load_judge
from mnistgen.params import load_section
from mnistgen.runtime import prepare, write_json
from mnistgen.scoring import REAL, EvaluateParams, evaluate, score_metrics
from mnistgen.stage import parse_args, run
from mnistgen.tracking import runs, store
from mnistgen.tracking.naming import metric_key
from mnistgen.tracking.settings import TrackingParams


def log_scores(record, rows: dict, calibration: dict, sources: dict, files: list[Path]):
    """Into the evaluate run: every row's scores (also on the pipeline run), the calibration
    rows, the files, and which training runs and checkpoints the rows came from."""
    scores = score_metrics(rows)
    record.metrics(scores)
    record.metrics(scores, on_parent=True)
    for name, row in calibration.items():  # one chart section: calibration/<row>.<metric>
        record.metrics({f"calibration/{metric_key(name)}.{k}": v
                     for k, v in row.items() if k != "kind"})
    for path in files:
        record.file(path, "figures" if path.suffix == ".png" else "metrics")
    record.link_sources(sources)


def main(argv=None):
    args = parse_args(__doc__, ["data", "judge", "samples", "figures", "summary", "per_class",
                                "calibration"], argv)
    params = load_section(args.params, "evaluate", EvaluateParams)
    settings = load_section(args.params, "tracking", TrackingParams)
    device, _ = prepare(params)
    store.check_store(store.tracking_uri())
    arrays = load_arrays(args.data)
    judge = load_judge(Path(args.judge), device)
    with runs.start_run(stage="evaluate", params=asdict(params), settings=settings) as record:
        record.dataset(Path(args.data), context="evaluation")
        result = evaluate(params=params, arrays=arrays, judge=judge, samples_dir=Path(args.samples),
                          device=device)
        rows = result["rows"]
        write_json(Path(args.summary), {"floor_frechet": rows[REAL]["frechet"], "rows": rows})
        write_json(Path(args.per_class), result["per_class"])
        write_json(Path(args.calibration), {"floor_frechet": rows[REAL]["frechet"],
                                            "rows": result["calibration"]})
        files = [Path(args.summary), Path(args.per_class), Path(args.calibration),
                 *sorted(Path(args.figures).glob("*.png"))]
        log_scores(record, rows, result["calibration"], result["sources"], files)


if __name__ == "__main__":
    sys.exit(run("evaluate", main))
