"""Sweep judge variants without MLflow or DVC: train each (params.yaml's train_judge plus
overrides) as the stage does, then read what `evaluate` would: test accuracy, the
real-vs-real floor and the calibration rows (real test digits under harmless and harmful
changes, as multiples of the floor). One JSON line per run, printed and appended to --out.

Usage: python -m bench.judge_sweep --variants variants.json --seeds 0 1 2 --out judges.jsonl
  variants.json: {"name": {"train_judge key": value, ...}, ...}
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mnistgen.classifier import JudgeParams, accuracy, train_judge
from mnistgen.data import load_arrays
from mnistgen.images import to_model_input
from mnistgen.params import load_section, parse_section, read_params
from mnistgen.runtime import pick_device, resolve_precision, set_seed, set_threads
from mnistgen.scoring import EvaluateParams, calibrate, judge_scores, reference


def run_variant(*, name: str, overrides: dict, seed: int, params_path: Path, arrays: dict) -> dict:
    raw = {**read_params(params_path)["train_judge"], **overrides, "seed": seed}
    p = parse_section(raw, JudgeParams, "train_judge")
    set_seed(p.seed)
    set_threads(p.threads)
    device = pick_device(p.device)
    limit = p.train_limit or len(arrays["train_images"])
    images = to_model_input(arrays["train_images"][:limit])
    labels = torch.as_tensor(arrays["train_labels"][:limit]).long()
    start = time.perf_counter()
    judge, steps = train_judge(params=p, images=images, labels=labels, device=device,
                               precision=resolve_precision(p.precision, device, model="judge"))
    seconds = time.perf_counter() - start
    judge.eval()
    test_acc = accuracy(judge, to_model_input(arrays["test_images"]),
                        torch.as_tensor(arrays["test_labels"]).long(), device)
    ep = load_section(params_path, "evaluate", EvaluateParams)
    ref = reference(params=ep, arrays=arrays, judge=judge)
    test_images, test_labels = ref["test_row"]
    floor = judge_scores(images=test_images, labels=test_labels, judge=judge, ref=ref)["frechet"]
    rows = calibrate(images=test_images, labels=test_labels.astype(np.int64), judge=judge, ref=ref)
    ratios = {row: round(v["frechet"] / floor, 2) for row, v in rows.items()}
    harmless = [r for row, r in ratios.items() if rows[row]["kind"] == "harmless"]
    harmful = [r for row, r in ratios.items() if rows[row]["kind"] == "harmful" and "wrong class" not in row]
    return {"name": name, "seed": seed, "overrides": overrides, "train_s": round(seconds, 1),
            "steps": steps, "test_accuracy": round(test_acc, 5), "floor": round(floor, 4),
            "harmless_max_x": max(harmless), "harmful_min_x": min(harmful), "x_floor": ratios}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data", type=Path, default=Path("data/mnist.npz"))
    args = ap.parse_args(argv)
    variants = json.loads(args.variants.read_text())
    arrays = load_arrays(args.data)
    with open(args.out, "a") as out:
        for seed in args.seeds:
            for name, overrides in variants.items():
                line = json.dumps(run_variant(name=name, overrides=overrides, seed=seed,
                                              params_path=args.params, arrays=arrays))
                print(line, flush=True)
                out.write(line + "\n")
                out.flush()


if __name__ == "__main__":
    main()
