import numpy as np
import pytest

from mnistgen.metrics import (frechet_distance, mean_pairwise_distance, precision_recall,
                              within_class_diversity)


def test_frechet_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_shifted_gaussians_matches_closed_form():
    # N(mu1, diag(a)) vs N(mu2, diag(b)): FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2,
    # evaluated on samples whitened to have exactly those moments.
    rng = np.random.default_rng(1)
    def with_moments(n, mean, var):
        z = rng.normal(size=(n, len(mean)))
        z = (z - z.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
        return mean + z * np.sqrt(var)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    mu1, mu2 = np.zeros(3), np.array([3.0, 0.0, -1.0])
    x, y = with_moments(2000, mu1, a), with_moments(3000, mu2, b)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_frechet_handles_full_covariances():
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(5, 5))
    x = rng.normal(size=(4000, 5)) @ mix
    y = rng.normal(size=(4000, 5)) @ mix.T + 1.0
    fd = frechet_distance(x, y)
    assert fd > 5.0  # shifted by 1 in 5 dims, different covariances
    assert frechet_distance(y, x) == pytest.approx(fd, rel=1e-6)


def test_precision_recall_on_constructed_sets():
    # real: a 10x10 lattice of spacing 1; k=3 radius = 1 for inner points
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    # fakes on top of the lattice's left half only: precise, but they miss half the data
    left = grid[grid[:, 0] < 5]
    precision, recall = precision_recall(grid, left, k=3)
    assert precision == 1.0
    assert 0.45 <= recall <= 0.65
    # fakes far away: neither precise nor covering
    far = grid + 100.0
    assert precision_recall(grid, far, k=3) == (0.0, 0.0)
    # identical sets: both 1
    assert precision_recall(grid, grid, k=3) == (1.0, 1.0)


def test_diversity_is_zero_for_copies_and_positive_otherwise():
    copies = np.ones((20, 4))
    assert mean_pairwise_distance(copies) == 0.0
    spread = np.eye(4)
    assert mean_pairwise_distance(spread) == pytest.approx(np.sqrt(2))
    labels = np.array([0] * 20 + [1] * 4)
    per_class = within_class_diversity(np.concatenate([copies, spread]), labels)
    assert per_class[0] == 0.0 and per_class[1] == pytest.approx(np.sqrt(2))


def test_copies_of_training_digits_sit_at_distance_zero_new_ones_do_not():
    """The novelty check's measure: a generator that copies its training set is caught."""
    from mnistgen.metrics import nearest_distances

    rng = np.random.default_rng(0)
    train, new = rng.normal(size=(500, 8)), rng.normal(size=(100, 8))
    assert np.allclose(nearest_distances(train[:100], train), 0.0, atol=1e-2)  # float32
    assert np.median(nearest_distances(new, train)) > 0.5
    assert nearest_distances(new, train).shape == (100,)
