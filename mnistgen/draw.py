"""Ask the trained GAN for digits: one row of the picture per digit you name.

Usage: python -m mnistgen.draw 7 3 [--count 8] [--seed 0] [--out digits.png]
           [--model models/gan.pt] [--interpolate]

Each row holds `count` samples of one digit, drawn from noise seeded by `seed` (the same
numbers give the same picture; the registered MLflow model draws the same digits for the
same {"digit", "count", "seed"} request, under the same limits). --interpolate walks the
noise along a great circle between two random points instead, so a row shows one digit
morphing in style. Like `curl -o` and ImageMagick, it writes into a folder that exists and
creates none; every mistake is one line and exit code 2 (arguments) or 1 (the output).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mnistgen.data import DataError
from mnistgen.gan import generate
from mnistgen.generators import MAX_COUNT, MAX_SEED, MAX_TOTAL, draw, load_gan
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


def whole(text: str, lo: int, hi: int, what: str) -> int:
    """argparse type: a whole number lo..hi, the served model's rule."""
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise argparse.ArgumentTypeError(f"{what} is a whole number {lo}-{hi}, got {text!r}")
    return int(text)


def digit_arg(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"a digit is 0-9, got {text!r}")
    return int(text)


class OneLineParser(argparse.ArgumentParser):
    """A mistake in the arguments: one line (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def check_out(path: Path) -> Path:
    """Refuse, before any work, an --out that cannot be written. -> where to write: a
    symbolic link is written through to the file it names, as `cp` and `curl -o` do (the
    link stays); a device, pipe or socket is refused, never replaced."""
    target = path.resolve() if path.is_symlink() else path
    if target.is_dir():
        raise DataError(f"--out {path} is a folder; name a .png file in it")
    if target.exists() and not target.is_file():
        raise DataError(f"--out {path} is not a regular file (a device, pipe or socket); name a .png file")
    if not target.parent.is_dir():
        raise DataError(f"--out {path}: folder {target.parent} does not exist (draw creates no folders)")
    return target


def main(argv=None):
    parser = OneLineParser(prog="draw", description=__doc__.splitlines()[0])
    parser.add_argument("digits", type=digit_arg, nargs="+", help="digits to draw, 0-9")
    parser.add_argument("--count", type=lambda t: whole(t, 1, MAX_COUNT, "count"), default=8,
                        help=f"images per digit, 1-{MAX_COUNT}")
    parser.add_argument("--seed", type=lambda t: whole(t, 0, MAX_SEED, "seed"), default=0,
                        help=f"noise seed, 0-{MAX_SEED}")
    parser.add_argument("--out", type=Path, default=Path("digits.png"))
    parser.add_argument("--model", type=Path, default=Path("models/gan.pt"))
    parser.add_argument("--interpolate", action="store_true", help="a latent walk per row")
    args = parser.parse_args(argv)
    if len(args.digits) * args.count > MAX_TOTAL:
        parser.error(f"{len(args.digits)} digits x {args.count} is more than {MAX_TOTAL:,} images")
    target = check_out(args.out)
    drawer = load_gan(args.model)
    image = picture(drawer, digits=args.digits, count=args.count, seed=args.seed, walk=args.interpolate)
    try:
        save_png(image, target)
    except OSError as err:  # no permission, a read-only or full disk, a name too long
        raise DataError(f"cannot write --out {args.out}: {err.strerror or err}") from err
    print(f"draw: {len(args.digits)} x {args.count} digits "
          f"({'latent walk' if args.interpolate else 'samples'}, seed {args.seed}) -> {args.out}")


if __name__ == "__main__":
    sys.exit(run("draw", main, command=True))
