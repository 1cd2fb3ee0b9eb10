"""Sweep GAN variants without MLflow or DVC: train each (params.yaml's train_gan plus
overrides), then score its EMA generator as `evaluate` does (judge accuracy, Fréchet
distance, precision/recall, diversity, CAS on 10 x per_class digits). One JSON line per
run, printed and appended to --out. Made for a GPU, where many small runs share one card;
the tables in docs/experiments.md came from it.

Usage: python -m bench.sweep --variants variants.json --seeds 0 1 --parallel 8 --out runs.jsonl
  variants.json: {"name": {"train_gan key": value, ...}, ...}
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from mnistgen.data import load_arrays
from mnistgen.generators import Drawer
from mnistgen.images import to_model_input
from mnistgen.judging import load_judge
from mnistgen.params import load_section, parse_section
from mnistgen.runtime import configure_cuda, pick_device, set_seed, set_threads
from mnistgen.gan import GanParams, GanState, settle_ema, train_loop
from mnistgen.sampling import draw_samples
from mnistgen.scoring import EvaluateParams, reference, rounded, score_row


def run_variant(*, name: str, overrides: dict, seed: int, params_path: Path, data: Path,
                judge_path: Path, device: str, per_class: int) -> dict:
    import yaml

    with open(params_path) as f:
        raw = yaml.safe_load(f)["train_gan"]
    raw.update(overrides)
    raw.update(seed=seed, device=device)
    p = parse_section(raw, GanParams, "train_gan")
    set_seed(p.seed)
    set_threads(p.threads)  # as the stage does, so a CPU run repeats `train_gan` bit for bit
    dev = pick_device(p.device)
    configure_cuda(dev)
    arrays = load_arrays(data)
    limit = p.train_limit or len(arrays["train_images"])
    images = to_model_input(arrays["train_images"][:limit]).to(dev)
    labels = torch.as_tensor(arrays["train_labels"][:limit]).long().to(dev)
    judge = load_judge(judge_path, dev)  # before G and D, as in the stage: same random init
    state = GanState(p, dev)
    start = time.perf_counter()
    train_loop(state, images=images, labels=labels, p=p)  # no monitor, no resume file
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    settle_ema(state, p)  # as save_model does: what `sample` would draw
    scores = score(generator=state.G_ema, latent_dim=p.latent_dim, arrays=arrays, judge=judge,
                   params_path=params_path, device=dev, per_class=per_class)
    return {"name": name, "seed": seed, "overrides": overrides, "train_s": round(seconds, 1),
            "steps": state.step, **scores}


def score(*, generator, latent_dim, arrays, judge, params_path, device, per_class) -> dict:
    """`evaluate`'s summary for one generator: the same reference digits, draw and metrics."""
    ep = dataclasses.replace(load_section(params_path, "evaluate", EvaluateParams), per_class=per_class)
    ref = reference(params=ep, arrays=arrays, judge=judge)
    drawer = Drawer("gan", generator, latent_dim, "gan", path=None)
    images, labels = draw_samples(drawer, per_class, ep.seed)  # the sample stage's draw
    summary, _ = score_row(images=images, labels=labels.astype(np.int64), judge=judge, ref=ref,
                           params=ep, device=device)
    return rounded(summary, 4)


def _job(kwargs: dict) -> dict:
    try:
        return run_variant(**kwargs)
    except Exception:  # one broken variant must not take the sweep down
        return {"name": kwargs["name"], "seed": kwargs["seed"], "error": traceback.format_exc()[-2000:]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (processes)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data", type=Path, default=Path("data/mnist.npz"))
    ap.add_argument("--judge", type=Path, default=Path("models/judge.pt"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--per-class", type=int, default=800)
    args = ap.parse_args(argv)
    variants = json.loads(args.variants.read_text())
    jobs = [dict(name=name, overrides=over, seed=seed, params_path=args.params, data=args.data,
                 judge_path=args.judge, device=args.device, per_class=args.per_class)
            for seed in args.seeds for name, over in variants.items()]
    results = []
    with mp.get_context("spawn").Pool(args.parallel, maxtasksperchild=1) as pool, \
            open(args.out, "a") as out:
        for result in pool.imap_unordered(_job, jobs):
            line = json.dumps(result)
            print(line, flush=True)
            out.write(line + "\n")
            out.flush()
            results.append(result)
    return results


if __name__ == "__main__":
    main()
