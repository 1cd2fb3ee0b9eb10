"""Image tensors <-> uint8 arrays and PNG grids."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnistgen.runtime import atomic_write_bytes


def to_model_input(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 784) -> float32 (N, 1, 28, 28) in [-1, 1]."""
    x = torch.as_tensor(images_u8).reshape(-1, 1, 28, 28).float()
    return x / 127.5 - 1.0


def to_uint8(images: torch.Tensor, low: float = -1.0) -> np.ndarray:
    """Float images in [low, 1] (any shape with 784 pixels per image) -> uint8 (N, 784)."""
    x = images.detach().float().cpu().reshape(-1, 784)
    x = (x - low) / (1.0 - low)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def grid(images_u8: np.ndarray, rows: int, pad: int = 2) -> np.ndarray:
    """uint8 (rows*cols, 784) -> one uint8 (H, W) picture, row-major, dark padding."""
    n = len(images_u8)
    cols = -(-n // rows)
    canvas = np.zeros((rows * (28 + pad) + pad, cols * (28 + pad) + pad), np.uint8)
    for i, img in enumerate(images_u8):
        r, c = divmod(i, cols)
        y, x = pad + r * (28 + pad), pad + c * (28 + pad)
        canvas[y:y + 28, x:x + 28] = img.reshape(28, 28)
    return canvas


def save_png(picture: np.ndarray, path: Path, scale: int = 2) -> None:
    img = Image.fromarray(picture)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
