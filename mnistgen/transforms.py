"""Changes to real digits that calibrate the scores (and augment the judge's training).

Harmless: a person can hardly see them, so a good score must barely move (the 28 -> 32 -> 28
resize many MNIST GANs imply, a 1-pixel shift, a light blur, light pixel noise). Harmful:
what a broken generator does (only the class means, one digit per class repeated, 10% of
the digits of the wrong class), so a good score must move a lot.

All take and return uint8 (N, 784) images (and labels (N,) where the class matters).
"""
from __future__ import annotations

import numpy as np
import torch

from mnistgen.models import gaussian_blur


def _as_float(images_u8: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(images_u8).reshape(-1, 1, 28, 28).float()


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    return x.round().clamp(0, 255).to(torch.uint8).reshape(-1, 784).numpy()


def resize_roundtrip(images_u8: np.ndarray, size: int = 32) -> np.ndarray:
    """28 -> size -> 28, bilinear both ways (torchvision's Resize, antialiased when shrinking):
    what a generator that works at 32x32 goes through."""
    import torchvision.transforms.v2.functional as TF  # only here: spare other stages the import

    x = TF.resize(_as_float(images_u8), [size, size], antialias=True)
    return _as_uint8(TF.resize(x, [28, 28], antialias=True))


def shift(images_u8: np.ndarray, dx: int = 1, dy: int = 0) -> np.ndarray:
    """Move every digit by (dx, dy) pixels; what enters is background (0)."""
    x = images_u8.reshape(-1, 28, 28)
    out = np.zeros_like(x)
    ys, yd = (slice(0, 28 - dy), slice(dy, 28)) if dy >= 0 else (slice(-dy, 28), slice(0, 28 + dy))
    xs, xd = (slice(0, 28 - dx), slice(dx, 28)) if dx >= 0 else (slice(-dx, 28), slice(0, 28 + dx))
    out[:, yd, xd] = x[:, ys, xs]
    return out.reshape(-1, 784)


def blur(images_u8: np.ndarray, sigma: float = 0.5) -> np.ndarray:
    """A Gaussian blur (3x3 kernel) of standard deviation `sigma` pixels."""
    return _as_uint8(gaussian_blur(_as_float(images_u8), 3, sigma))


def noise(images_u8: np.ndarray, std: float = 8.0, seed: int = 0) -> np.ndarray:
    """Gaussian pixel noise of `std` grey levels (of 255), clipped."""
    gen = torch.Generator().manual_seed(seed)
    x = _as_float(images_u8)
    return _as_uint8(x + std * torch.randn(x.shape, generator=gen))


def class_means(images_u8: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every digit replaced by the mean image of its class (what the seed's generator draws)."""
    out = np.empty_like(images_u8)
    for c in np.unique(labels):
        out[labels == c] = images_u8[labels == c].astype(np.float64).mean(0).round().astype(np.uint8)
    return out


def one_per_class(images_u8: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every digit replaced by the first real digit of its class: mode collapse."""
    out = np.empty_like(images_u8)
    for c in np.unique(labels):
        out[labels == c] = images_u8[np.flatnonzero(labels == c)[0]]
    return out


def wrong_class(images_u8: np.ndarray, labels: np.ndarray, share: float = 0.1,
                seed: int = 0) -> np.ndarray:
    """`share` of the digits swapped for a digit of another class (the labels stay)."""
    rng = np.random.default_rng(seed)
    out = images_u8.copy()
    for i in rng.choice(len(labels), int(round(share * len(labels))), replace=False):
        out[i] = images_u8[rng.choice(np.flatnonzero(labels != labels[i]))]
    return out


# name -> (kind, function of (images, labels)); the order of the calibration table
CALIBRATION = {
    "resize 28-32-28": ("harmless", lambda x, y: resize_roundtrip(x)),
    "shift 1 px": ("harmless", lambda x, y: shift(x, 1, 0)),
    "blur sigma 0.5": ("harmless", lambda x, y: blur(x, 0.5)),
    "noise 8/255": ("harmless", lambda x, y: noise(x, 8.0)),
    "class means": ("harmful", class_means),
    "one digit per class": ("harmful", one_per_class),
    "10% wrong class": ("harmful", wrong_class),
}
