"""Scoring images with the judge: its predictions and its penultimate-layer features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mnistgen.images import to_model_input
from mnistgen.metrics import frechet_distance
from mnistgen.models import build
from mnistgen.runtime import fast_layout, inference_batch, load_checkpoint


def load_judge(path: Path, device: torch.device = torch.device("cpu")):
    payload = load_checkpoint(path, "judge")
    judge = build("judge", payload["config"])
    judge.load_state_dict(payload["state"]["model"])
    return fast_layout(judge.to(device)).eval()


@torch.no_grad()
def features_and_predictions(judge, images_u8: np.ndarray):
    """uint8 (N, 784) -> features float64 (N, feature_dim), predicted labels (N,)."""
    device = next(judge.parameters()).device
    batch = inference_batch(device)
    feats, preds = [], []
    for i in range(0, len(images_u8), batch):
        x = to_model_input(images_u8[i:i + batch]).to(device)
        h = judge.embed(x)
        feats.append(h.double().cpu())
        preds.append(judge.head(h).argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


def quick_score(judge, images_u8, labels, reference_features) -> dict:
    """Conditional accuracy and Fréchet distance against precomputed real features."""
    feats, preds = features_and_predictions(judge, images_u8)
    return {"accuracy": float((preds == labels).mean()),
            "frechet": frechet_distance(reference_features, feats)}
