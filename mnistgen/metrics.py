"""Sample-quality metrics on feature vectors (rows = samples), all in float64."""
from __future__ import annotations

import numpy as np
import torch


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(matrix)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FD = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between Gaussian fits.

    Tr((S_r S_g)^(1/2)) = Tr((A S_g A)^(1/2)) with A = S_r^(1/2): a symmetric PSD form
    whose eigenvalues are real, so no complex sqrtm is needed.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu_r, mu_g = real.mean(0), fake.mean(0)
    s_r, s_g = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root_r = _sqrt_psd(s_r)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_r @ s_g @ root_r), 0, None)).sum()
    value = float(((mu_r - mu_g) ** 2).sum() + np.trace(s_r) + np.trace(s_g) - 2 * cross)
    return max(value, 0.0)


def knn_radii(points: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point (chunked: bounded memory)."""
    # k + 1: the point itself is at distance 0; topk of a few is faster than kthvalue here
    return torch.cat([torch.cdist(points[i:i + chunk], points).topk(k + 1, dim=1, largest=False)
                      .values[:, k] for i in range(0, len(points), chunk)])


class RealManifold:
    """The real features (N, D) and their k-NN radii: computed once, read by every row."""

    def __init__(self, real: np.ndarray, k: int):
        self.points = torch.as_tensor(real, dtype=torch.float64)
        self.radii = knn_radii(self.points, k)
        self.k = k

    def precision_recall(self, fake: np.ndarray, chunk: int = 1024) -> tuple[float, float]:
        """Improved precision/recall (Kynkäänniemi et al. 2019) of `fake` (M, D): the share
        of fakes inside the union of real balls, and of reals inside the union of fake
        balls; one distance matrix (fake x real, chunked) serves both."""
        fake_t = torch.as_tensor(fake, dtype=torch.float64)
        fake_radii = knn_radii(fake_t, self.k)
        inside_real = torch.zeros(len(fake_t), dtype=torch.bool)
        covered = torch.zeros(len(self.points), dtype=torch.bool)
        for i in range(0, len(fake_t), chunk):
            d = torch.cdist(fake_t[i:i + chunk], self.points)  # (chunk, N)
            inside_real[i:i + chunk] = (d <= self.radii[None, :]).any(dim=1)
            covered |= (d <= fake_radii[i:i + chunk, None]).any(dim=0)
        return float(inside_real.double().mean()), float(covered.double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    return RealManifold(real, k).precision_recall(fake)


def nearest_distances(queries: np.ndarray, references: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(N,) distance from each query (N, D) to its nearest reference (M, D), in float32 (a
    median is read from it, not a boundary)."""
    q = torch.as_tensor(queries, dtype=torch.float32)
    r = torch.as_tensor(references, dtype=torch.float32)
    return torch.cat([torch.cdist(q[i:i + chunk], r).min(dim=1).values
                      for i in range(0, len(q), chunk)]).double().numpy()


def mean_pairwise_distance(points: np.ndarray, chunk: int = 1024) -> float:
    """Average distance between distinct points: 0 when every sample is the same."""
    pts = torch.as_tensor(points, dtype=torch.float64)
    n = len(pts)
    if n < 2:
        return 0.0
    total = sum(float(torch.cdist(pts[i:i + chunk], pts).sum()) for i in range(0, n, chunk))
    return total / (n * (n - 1))


def within_class_diversity(features: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {int(c): mean_pairwise_distance(features[labels == c]) for c in np.unique(labels)}
