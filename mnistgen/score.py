"""Score anyone's generated digits on this project's protocol: the same judge, reference
digits, seed and metrics as the `evaluate` stage, so your generator and ours sit in one table.

Usage: python -m mnistgen.score my_samples.npz [--out my_samples.score.json]
           [--data data/mnist.npz] [--judge models/judge.pt] [--params params.yaml]

my_samples.npz holds `images`: uint8 (N, H, W) or (N, H*W), white digits on black, 0..255,
and `labels`: integers 0..9 (N,), at least `evaluate.per_class` digits of each class (the
first ones by a fixed seeded pick are scored). Images that are not 28x28 (e.g. 32x32) are
resized to 28x28 with antialiased bilinear interpolation (torchvision's resize), which is
itself a harmless change the calibration rows of `evaluate` measure.
Prints one line (accuracy, Fréchet distance and its ratio to the real-vs-real floor,
precision, recall, diversity, CAS) and writes it as JSON.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from mnistgen.data import DataError, load_arrays
from mnistgen.judging import features_and_predictions, load_judge
from mnistgen.metrics import frechet_distance
from mnistgen.params import load_section
from mnistgen.runtime import prepare, write_json
from mnistgen.scoring import (EvaluateParams, generator_pick, nearest_train, reference, rounded,
                              score_row)
from mnistgen.stage import run


def read_samples(path: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 784) images and int64 (N,) labels from a user's .npz, or one clear DataError."""
    if path.is_dir():
        raise DataError(f"{path}: is a folder; name an .npz file (images, labels)")
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in ("images", "labels") if key not in npz.files]
            if missing:
                raise DataError(f"{path}: no '{missing[0]}' array (it holds {', '.join(npz.files) or 'none'});"
                                f" save with np.savez(path, images=..., labels=...)")
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz ({err})") from err
    return check_images(images, path), check_labels(labels, len(images), per_class, path)


def check_images(images: np.ndarray, path: Path) -> np.ndarray:
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0:
            raise DataError(f"{path}: images are floats in [0, 1]; save (images * 255).round()"
                            f".astype(np.uint8) instead")
        raise DataError(f"{path}: images are {images.dtype}; expected uint8 grey levels 0..255")
    if images.ndim == 2:
        side = int(round(images.shape[1] ** 0.5))
        if side * side != images.shape[1]:
            raise DataError(f"{path}: images of shape {images.shape}: {images.shape[1]} pixels is "
                            f"not a square image; expected (N, 28, 28) or (N, 784)")
        images = images.reshape(-1, side, side)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise DataError(f"{path}: images of shape {images.shape}; expected (N, H, W) square "
                        f"images, e.g. (N, 28, 28)")
    if images.shape[1] != 28:  # the documented resize: bilinear, antialiased
        x = torch.as_tensor(images).unsqueeze(1).float()
        images = TF.resize(x, [28, 28], antialias=True).round().clamp(0, 255).to(torch.uint8).numpy()
    return images.reshape(-1, 784)


def check_labels(labels: np.ndarray, n: int, per_class: int, path: Path) -> np.ndarray:
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels of shape {labels.shape} and type {labels.dtype}; "
                        f"expected {n} integers 0..9, one per image")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be digits 0..9, found {labels.min()}..{labels.max()}")
    counts = np.bincount(labels, minlength=10)
    if counts.min() < per_class:
        digit = int(counts.argmin())
        raise DataError(f"{path}: {counts[digit]} images of digit {digit}; every digit needs at least "
                        f"evaluate.per_class = {per_class} (or lower it with --params)")
    return labels.astype(np.int64)


def score_file(*, samples: Path, params: EvaluateParams, data: Path, judge_path: Path) -> dict:
    """`evaluate`'s summary row for the samples in `samples`, plus the floor it is read against."""
    images, labels = read_samples(samples, params.per_class)
    device, _ = prepare(params)
    arrays = load_arrays(data)
    judge = load_judge(judge_path, device)
    ref = reference(params=params, arrays=arrays, judge=judge)
    pick = generator_pick(labels, params.per_class, params.seed)
    row, _ = score_row(images=images[pick], labels=labels[pick], judge=judge, ref=ref,
                       params=params, device=device)
    test_images, _ = ref["test_row"]  # the real-vs-real floor, as evaluate's real row
    test_feats = features_and_predictions(judge, test_images)[0]
    floor = frechet_distance(ref["features"], test_feats)
    return {"row": rounded(row), "floor_frechet": rounded(floor),
            "real_nearest_train": rounded(nearest_train(test_feats, ref)), "samples": str(samples)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path)
    parser.add_argument("--out", type=Path, help="default: <samples>.score.json")
    parser.add_argument("--data", type=Path, default=Path("data/mnist.npz"))
    parser.add_argument("--judge", type=Path, default=Path("models/judge.pt"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_section(args.params, "evaluate", EvaluateParams)
    result = score_file(samples=args.samples, params=params, data=args.data, judge_path=args.judge)
    out = args.out or args.samples.with_suffix(".score.json")
    write_json(out, result)
    row, floor = result["row"], result["floor_frechet"]
    print(f"score: {args.samples}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items())
          + f" (Fréchet {row['frechet'] / floor:.1f}x the real-vs-real floor {floor:.4f}; nearest "
          f"training digit {row['nearest_train'] / result['real_nearest_train']:.2f}x real test "
          f"digits') -> {out}")


if __name__ == "__main__":
    sys.exit(run("score", main, command=True))
