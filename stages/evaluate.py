"""Stage evaluate: the judge scores real test digits (the reference row) and every
generator's samples (see mnistgen.scoring); one MLflow run with every row, and each
generator's scores also on the run that trained it. Calibration rows: the real test digits
under harmless and harmful changes (mnistgen.transforms), scored the same way.

Usage: python -m stages.evaluate --data data/mnist.npz --judge models/judge.pt \
    --samples samples --figures figures --summary metrics/evaluate.json \
    --per-class metrics/per_class.json --calibration metrics/calibration.json
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from mnistgen import tracking
from mnistgen.data import load_arrays
from mnistgen.judging import load_judge
from mnistgen.params import load_section
from mnistgen.runtime import prepare, write_json
from mnistgen.scoring import REAL, EvaluateParams, evaluate
from mnistgen.stage import parse_args, run


def log_to_mlflow(rows: dict, params: EvaluateParams, sources: dict, figures: list[Path]):
    """One evaluate run with every row; each generator's numbers also on its training run."""
    with tracking.start_run(stage="evaluate", params=asdict(params)):
        for name, row in rows.items():
            tracking.log_metrics({f"{name}.{k}": v for k, v in row.items()})
        for fig in figures:
            tracking.log_file(fig, "figures")
    for name, sha in sources.items():
        if not tracking.log_to_training_run(sha, {f"eval.{k}": v for k, v in rows[name].items()}):
            print(f"evaluate: no MLflow training run wrote the {name} checkpoint; its scores are "
                  f"in the evaluate run only", file=sys.stderr)


def main(argv=None):
    args = parse_args(__doc__, ["data", "judge", "samples", "figures", "summary", "per_class",
                                "calibration"], argv)
    params = load_section(args.params, "evaluate", EvaluateParams)
    device, _ = prepare(params)
    tracking.check_store(tracking.tracking_uri())
    arrays = load_arrays(args.data)
    judge = load_judge(Path(args.judge), device)
    result = evaluate(params=params, arrays=arrays, judge=judge, samples_dir=Path(args.samples),
                      device=device)
    rows = result["rows"]
    write_json(Path(args.summary), {"floor_frechet": rows[REAL]["frechet"], "rows": rows})
    write_json(Path(args.per_class), result["per_class"])
    write_json(Path(args.calibration), {"floor_frechet": rows[REAL]["frechet"],
                                        "rows": result["calibration"]})
    log_to_mlflow(rows, params, result["sources"], sorted(Path(args.figures).glob("*.png")))


if __name__ == "__main__":
    sys.exit(run("evaluate", main))
