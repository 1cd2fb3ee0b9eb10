"""The calibration changes (mnistgen.transforms): shapes, value ranges, and that each does
what its name says."""
import numpy as np
import pytest
import torch
from torchvision import transforms as T

from mnistgen import transforms as tf

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (40, 784), dtype=np.uint8)
LABELS = np.arange(40) % 10


@pytest.mark.parametrize("name", tf.CALIBRATION)
def test_every_change_keeps_shape_and_dtype(name):
    kind, change = tf.CALIBRATION[name]
    out = change(IMAGES, LABELS)
    assert kind in ("harmless", "harmful")
    assert out.shape == IMAGES.shape and out.dtype == np.uint8


def test_resize_roundtrip_is_torchvisions_resize_there_and_back():
    x = torch.as_tensor(IMAGES).reshape(-1, 1, 28, 28).float()
    there_and_back = T.Compose([T.Resize(32, antialias=True), T.Resize(28, antialias=True)])
    expected = there_and_back(x).round().clamp(0, 255).to(torch.uint8).reshape(-1, 784).numpy()
    out = tf.resize_roundtrip(IMAGES)
    assert np.array_equal(out, expected)
    assert not np.array_equal(out, IMAGES)  # it does change the pixels


def test_shift_moves_each_pixel_one_column_right():
    out = tf.shift(IMAGES, 1, 0).reshape(-1, 28, 28)
    x = IMAGES.reshape(-1, 28, 28)
    assert np.array_equal(out[:, :, 1:], x[:, :, :-1]) and not out[:, :, 0].any()
    assert np.array_equal(tf.shift(tf.shift(IMAGES, 0, 2), 0, -2).reshape(-1, 28, 28)[:, 2:-2],
                          x[:, 2:-2])


def test_blur_smooths_but_keeps_the_brightness():
    out = tf.blur(IMAGES, 0.5).astype(float)
    assert out.std() < IMAGES.std()
    inner = lambda a: a.reshape(-1, 28, 28)[:, 1:-1, 1:-1].mean()  # noqa: E731 - borders lose light
    assert inner(out) == pytest.approx(inner(IMAGES.astype(float)), rel=0.01)


def test_noise_is_light_and_seeded():
    out = tf.noise(IMAGES, 8.0)
    assert np.array_equal(out, tf.noise(IMAGES, 8.0))
    assert 4 < np.abs(out.astype(int) - IMAGES).mean() < 8  # clipping at 0 and 255 trims some


def test_harmful_changes():
    means = tf.class_means(IMAGES, LABELS)
    ones = tf.one_per_class(IMAGES, LABELS)
    for c in range(10):
        members = LABELS == c
        assert np.array_equal(means[members][0], IMAGES[members].mean(0).round().astype(np.uint8))
        assert (means[members] == means[members][0]).all() and (ones[members] == ones[members][0]).all()
    wrong = tf.wrong_class(IMAGES, LABELS, share=0.1)
    changed = np.flatnonzero((wrong != IMAGES).any(1))
    assert len(changed) == 4  # 10% of 40
    for i in changed:  # each replacement is a real digit of another class
        sources = np.flatnonzero((IMAGES == wrong[i]).all(1))
        assert len(sources) and all(LABELS[j] != LABELS[i] for j in sources)


def test_judge_augmentation_keeps_shape_and_range_and_is_seeded():
    from mnistgen.classifier import smooth_and_noise

    x = torch.as_tensor(IMAGES).reshape(-1, 1, 28, 28).float() / 127.5 - 1
    same = smooth_and_noise(x, smooth=0.0, noise=0.0, gen=torch.Generator().manual_seed(0))
    assert torch.equal(same, x)
    a = smooth_and_noise(x, smooth=0.5, noise=8.0, gen=torch.Generator().manual_seed(0))
    b = smooth_and_noise(x, smooth=0.5, noise=8.0, gen=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, x)


def test_harmless_copy_is_seeded_and_stays_in_range():
    from mnistgen.classifier import harmless_copy

    x = torch.as_tensor(IMAGES).reshape(-1, 1, 28, 28).float() / 127.5 - 1
    a = harmless_copy(x, noise=8.0, gen=torch.Generator().manual_seed(1))
    b = harmless_copy(x, noise=8.0, gen=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    # every image changes, but little: the ink stays (blur and resampling keep the sum)
    assert ((a - x).abs().flatten(1).amax(1) > 0).all()
    assert torch.allclose((a + 1).sum((1, 2, 3)), (x + 1).sum((1, 2, 3)), rtol=0.15)


def test_feature_drift_is_zero_when_nothing_moves_and_ignores_scale():
    from mnistgen.classifier import feature_drift

    gen = torch.Generator().manual_seed(0)
    f, g, spread = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen), torch.rand(5) + 0.5
    assert feature_drift(f, f, spread) == 0
    assert torch.isclose(feature_drift(3 * f, 3 * g, 9 * spread), feature_drift(f, g, spread))


def test_the_consistency_term_adds_the_drift_to_cross_entropy():
    from torch.nn import functional as F

    from mnistgen.classifier import classify_and_hold
    from mnistgen.models import Judge, JudgeConfig

    judge = Judge(JudgeConfig(channels=[4, 8], feature_dim=16, input_blur=1.5, pool="blur")).eval()
    x = torch.as_tensor(IMAGES).reshape(-1, 1, 28, 28).float() / 127.5 - 1
    y = torch.as_tensor(LABELS).long()
    kwargs = dict(noise=8.0, device=torch.device("cpu"), precision="fp32")
    plain = F.cross_entropy(judge(x), y)
    assert torch.isclose(classify_and_hold(judge, x, y, weight=0.0, gen=torch.Generator().manual_seed(0),
                                           **kwargs), plain)
    held = classify_and_hold(judge, x, y, weight=1.0, gen=torch.Generator().manual_seed(0), **kwargs)
    assert held > plain
    held.backward()  # the drift reaches the first conv layer's weights
    assert judge.conv[0].weight.grad.abs().sum() > 0
