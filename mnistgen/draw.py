"""Ask the trained GAN for digits: one row of the picture per digit you name.

Usage: python -m mnistgen.draw 7 3 [--count 8] [--seed 0] [--out digits.png]
           [--model models/gan.pt] [--interpolate]

Each row holds `count` samples of one digit, drawn from noise seeded by `seed` (the same
numbers give the same picture; the registered MLflow model draws the same digits for the
same {"digit", "count", "seed"} request). --interpolate walks the noise along a great
circle between two random points instead, so a row shows one digit morphing in style.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mnistgen.gan import generate
from mnistgen.generators import MAX_COUNT, draw, load_gan
from mnistgen.images import grid, save_png
from mnistgen.stage import run


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """(steps, latent) points on the great circle from a to b (latent (latent,) each);
    Gaussian noise lives near a sphere, so straight lines would pass through unlikely,
    low-norm points."""
    omega = torch.arccos((a / a.norm()).dot(b / b.norm()).clamp(-1, 1))
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    if omega.abs() < 1e-6:
        return a + t * (b - a)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def interpolate(drawer, *, digit: int, count: int, seed: int) -> np.ndarray:
    """uint8 (count, 784): `digit` along a latent walk between two seeded noise vectors."""
    ends = torch.randn(2, drawer.latent_dim, generator=torch.Generator().manual_seed(seed))
    z = slerp(ends[0], ends[1], count)
    return generate(drawer.model, torch.full((count,), digit, dtype=torch.long), z)


def picture(drawer, *, digits: list[int], count: int, seed: int, walk: bool) -> np.ndarray:
    """uint8 (H, W): one row per digit."""
    rows = [interpolate(drawer, digit=d, count=count, seed=seed) if walk
            else draw(drawer, digit=d, count=count, seed=seed).reshape(count, 784) for d in digits]
    return grid(np.concatenate(rows), rows=len(digits))


def digit_arg(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"a digit is 0-9, got {text!r}")
    return int(text)


def count_arg(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"count is 1-{MAX_COUNT}, got {text!r}")
    return int(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("digits", type=digit_arg, nargs="+", help="digits to draw, 0-9")
    parser.add_argument("--count", type=count_arg, default=8, help="images per digit")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--out", type=Path, default=Path("digits.png"))
    parser.add_argument("--model", type=Path, default=Path("models/gan.pt"))
    parser.add_argument("--interpolate", action="store_true", help="a latent walk per row")
    args = parser.parse_args(argv)
    drawer = load_gan(args.model)
    image = picture(drawer, digits=args.digits, count=args.count, seed=args.seed, walk=args.interpolate)
    save_png(image, args.out)
    print(f"draw: {len(args.digits)} x {args.count} digits "
          f"({'latent walk' if args.interpolate else 'samples'}, seed {args.seed}) -> {args.out}")


if __name__ == "__main__":
    sys.exit(run("draw", main, dvc_removes_outputs=False))
