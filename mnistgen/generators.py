"""Loading the trained generators behind one interface: draw(labels, z) -> uint8 (N, 784)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mnistgen.data import sha256_file
from mnistgen.images import to_uint8
from mnistgen.models import build
from mnistgen.runtime import fast_layout, inference_batch, load_checkpoint


# the same limits for `python -m mnistgen.draw` and the served model
MAX_COUNT = 1000  # images of one digit (one row of a request)
MAX_TOTAL = 10_000  # images of one request: 7.8 MB of pixels, a few seconds of work
MAX_SEED = 2**31 - 1  # noise seeds 0..MAX_SEED
# noise is drawn this many rows at a time (torch's CPU normal sampler gives other numbers for
# other sizes): the samples' bytes depend on it, the speed does not (see Drawer.draw)
NOISE_ROWS = 1000


def draw(drawer, *, digit: int, count: int, seed: int) -> np.ndarray:
    """uint8 (count, 28, 28) images of `digit`, noise seeded by `seed`: what both
    `python -m mnistgen.draw` and the registered MLflow model return for one request."""
    labels = torch.full((count,), digit, dtype=torch.long)
    return drawer.draw(labels, torch.Generator().manual_seed(seed)).reshape(-1, 28, 28)


class Drawer:
    """A trained generator: name, latent size (0 = deterministic) and a draw function."""

    def __init__(self, name: str, model, latent_dim: int, kind: str, path: Path | None):
        self.name, self.latent_dim, self.kind = name, latent_dim, kind
        self.model = fast_layout(model).eval()
        # links samples to the MLflow training run (None: a model not loaded from a file)
        self.checkpoint_sha256 = sha256_file(path) if path is not None else None

    @torch.no_grad()
    def draw(self, labels: torch.Tensor, gen: torch.Generator) -> np.ndarray:
        """uint8 (N, 784) for the requested labels; noise from the CPU generator `gen`."""
        device = next(self.model.parameters()).device
        if self.kind != "inverted":  # (N, latent), NOISE_ROWS rows per draw from `gen`
            z = torch.cat([torch.randn(len(labels[i:i + NOISE_ROWS]), self.latent_dim, generator=gen)
                           for i in range(0, len(labels), NOISE_ROWS)])
        out, batch = [], inference_batch(device)
        for i in range(0, len(labels), batch):
            y = labels[i:i + batch]
            if self.kind == "inverted":  # one image per label: the model has no noise input
                onehot = F.one_hot(y, 10).float().to(device)
                out.append(to_uint8(self.model.intensities(onehot), low=0.0))
            else:
                out.append(to_uint8(self.model(z[i:i + batch].to(device), y.to(device))))
        return np.concatenate(out)


def load_inverted(path: Path) -> Drawer:
    payload = load_checkpoint(path, "inverted")
    model = build("inverted", payload["config"])
    model.load_state_dict(payload["state"]["model"])
    return Drawer(f"inverted_{payload['config']['output']}", model, 0, "inverted", path)


def load_gan(path: Path) -> Drawer:
    payload = load_checkpoint(path, "gan")
    model = build("generator", payload["config"])
    model.load_state_dict(payload["state"]["generator"])  # the EMA generator
    return Drawer("gan", model, payload["config"]["latent_dim"], "gan", path)


def load_all(inverted_dir: Path, gan_path: Path) -> list[Drawer]:
    """The seed's generator first, its variants, then the GAN."""
    paths = sorted(Path(inverted_dir).glob("*.pt"), key=lambda p: (p.stem != "softmax", p.stem))
    return [load_inverted(p) for p in paths] + [load_gan(gan_path)]
