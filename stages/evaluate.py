"""Stage evaluate: the judge scores real test digits (the reference row) and every
generator's samples (see mnistgen.scoring); one MLflow run with every row, linked to the
runs and checkpoints it scored, and each generator's scores also on the run that trained it
(`final/*`). Calibration rows: the real test digits under harmless and harmful changes
(mnistgen.transforms), scored the same way. The registered GAN's `champion` alias moves to
the new generator only when it beats the current champion.

Usage: python -m stages.evaluate --data data/mnist.npz --judge models/judge.pt \
    --samples samples --figures figures --summary metrics/evaluate.json \
    --per-class metrics/per_class.json --calibration metrics/calibration.json
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from mnistgen import registry, tracking
from mnistgen.data import load_arrays, sha256_file
from mnistgen.judging import load_judge
from mnistgen.params import load_section
from mnistgen.runtime import prepare, write_json
from mnistgen.scoring import REAL, EvaluateParams, evaluate
from mnistgen.stage import parse_args, run

REGISTERED = "draw-mnist-cgan"


def log_scores(rows: dict, calibration: dict, sources: dict, files: list[Path]):
    """Into the active evaluate run: every row's scores, the calibration rows, the files, and
    which training runs and checkpoints the rows came from."""
    floor = rows[REAL]["frechet"]
    scores = {}
    for name, row in rows.items():
        scores |= {f"{name}/{k}": v for k, v in row.items()}
        scores[f"{name}/frechet_x_floor"] = row["frechet"] / floor
    tracking.log_metrics(scores)
    tracking.log_metrics_to_parent(scores)
    for name, row in calibration.items():  # one chart section: calibration/<row>.<metric>
        tracking.log_metrics({f"calibration/{registry.metric_key(name)}.{k}": v
                              for k, v in row.items() if k != "kind"})
    for path in files:
        tracking.log_file(path, "figures" if path.suffix == ".png" else "metrics")
    registry.link_sources(sources)


def main(argv=None):
    args = parse_args(__doc__, ["data", "judge", "samples", "figures", "summary", "per_class",
                                "calibration"], argv)
    params = load_section(args.params, "evaluate", EvaluateParams)
    device, _ = prepare(params)
    tracking.check_store(tracking.tracking_uri())
    arrays = load_arrays(args.data)
    judge = load_judge(Path(args.judge), device)
    with tracking.start_run(stage="evaluate", params=asdict(params)):  # open while it scores
        tracking.log_mnist_input(Path(args.data), context="evaluation")
        result = evaluate(params=params, arrays=arrays, judge=judge, samples_dir=Path(args.samples),
                          device=device)
        rows = result["rows"]
        write_json(Path(args.summary), {"floor_frechet": rows[REAL]["frechet"], "rows": rows})
        write_json(Path(args.per_class), result["per_class"])
        write_json(Path(args.calibration), {"floor_frechet": rows[REAL]["frechet"],
                                            "rows": result["calibration"]})
        files = [Path(args.summary), Path(args.per_class), Path(args.calibration),
                 *sorted(Path(args.figures).glob("*.png"))]
        log_scores(rows, result["calibration"], result["sources"], files)
    judge_sha256 = sha256_file(args.judge)
    for name, sha in result["sources"].items():
        final = {f"final/{k}": v for k, v in rows[name].items()}
        final["final/frechet_floor"] = rows[REAL]["frechet"]
        final["final/frechet_x_floor"] = rows[name]["frechet"] / rows[REAL]["frechet"]
        if not registry.log_to_training_run(sha, final, judge_sha256=judge_sha256):
            print(f"evaluate: no MLflow training run wrote the {name} checkpoint; its scores are "
                  f"in the evaluate run only", file=sys.stderr)
        elif name == "gan":
            outcome = registry.promote_champion(sha, judge_sha256=judge_sha256,
                                                registered_name=REGISTERED)
            print(f"evaluate: {outcome}")


if __name__ == "__main__":
    sys.exit(run("evaluate", main))
