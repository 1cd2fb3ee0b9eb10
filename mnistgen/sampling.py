"""Drawing from every generator: a 10-row grid each (one row per digit), an inverted-vs-GAN
comparison figure, and `per_class` samples per digit (uint8, class-major) for evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mnistgen.generators import Drawer
from mnistgen.images import grid, save_png
from mnistgen.params import RunParams, field
from mnistgen.runtime import write_npz


@dataclass
class SampleParams(RunParams):
    """params.yaml's `sample` section."""
    per_class: int = field(lo=1, hi=100000, doc="samples per digit saved for evaluation")
    grid_columns: int = field(lo=1, hi=100, doc="samples per row in the grids")


def grid_path(figures_dir: Path, name: str) -> Path:
    """The grid of one generator's digits (one row per digit) in `figures_dir`."""
    return Path(figures_dir) / f"grid_{name}.png"


def draw_samples(drawer: Drawer, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (10*per_class, 784) and labels, in class-major order."""
    labels = torch.arange(10).repeat_interleave(per_class)
    return drawer.draw(labels, torch.Generator().manual_seed(seed)), labels.numpy().astype(np.uint8)


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    img = Image.new("L", (picture.shape[1], picture.shape[0] + 14), 0)
    img.paste(Image.fromarray(picture), (0, 14))
    ImageDraw.Draw(img).text((2, 1), title, fill=255)
    return np.asarray(img)


def comparison(pictures: dict[str, np.ndarray], gap: int = 6) -> np.ndarray:
    """Panels side by side, each with its generator's name above."""
    panels = [titled(pic, name) for name, pic in pictures.items()]
    height = max(p.shape[0] for p in panels)
    parts = []
    for panel in panels:
        parts += [np.pad(panel, ((0, height - panel.shape[0]), (0, 0))), np.zeros((height, gap), np.uint8)]
    return np.concatenate(parts[:-1], axis=1)


def write_samples(drawers: list[Drawer], *, params: SampleParams, samples_dir: Path,
                  figures_dir: Path) -> list[str]:
    """<samples_dir>/<name>.npz (images, labels, checkpoint_sha256) and
    <figures_dir>/grid_<name>.png per generator, plus <figures_dir>/comparison.png."""
    pictures = {}
    for drawer in drawers:
        images, labels = draw_samples(drawer, params.per_class, params.seed)
        write_npz(Path(samples_dir) / f"{drawer.name}.npz", images=images, labels=labels,
                  checkpoint_sha256=np.array(drawer.checkpoint_sha256))
        # rows = digits 0..9, columns = the first grid_columns samples of each digit
        cols = min(params.grid_columns, params.per_class)
        picks = (np.arange(10)[:, None] * params.per_class + np.arange(cols)[None, :]).ravel()
        pictures[drawer.name] = grid(images[picks], rows=10)
        save_png(pictures[drawer.name], grid_path(figures_dir, drawer.name))
    save_png(comparison(pictures), Path(figures_dir) / "comparison.png")
    return list(pictures)
