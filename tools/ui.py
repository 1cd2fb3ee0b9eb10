"""`make ui`: the MLflow UI on 127.0.0.1, printing the address of the runs table.

MLflow 3.17's UI opens an experiment on its GenAI pages (traces) unless its "Model
training" switch is set; the printed address sets it (click the switch once and the
browser remembers it too).

Usage: python tools/ui.py [--port 5000]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnistgen.tracking.names import EXPERIMENT  # noqa: E402
from mnistgen.tracking.store import check_store, tracking_uri, ui_path  # noqa: E402


def experiment_id(uri: str) -> str | None:
    from mlflow.tracking import MlflowClient

    found = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    return found.experiment_id if found else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    uri = tracking_uri()
    check_store(uri)
    url = f"http://127.0.0.1:{args.port}/{ui_path(experiment_id(uri))}"
    print(f"MLflow UI for {uri}\n  runs: {url}\n  (Ctrl-C stops it)", flush=True)
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1",
                               "--port", str(args.port), "--backend-store-uri", uri])


if __name__ == "__main__":
    main()
