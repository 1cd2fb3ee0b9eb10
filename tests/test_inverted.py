import torch

from mnistgen.models import InvertedConfig, InvertedGenerator
from mnistgen.inverted import train_inverted


def small_set(seed=0, n_per_class=20):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    base = torch.rand(10, 784, generator=gen) ** 4  # a distinct "digit" per class
    images = (base[labels] + 0.2 * torch.rand(len(labels), 784, generator=gen)).clamp(0, 1)
    return images, labels


def class_means(images, labels):
    return torch.stack([images[labels == c].mean(0) for c in range(10)])


def test_softmax_generator_reaches_normalized_class_means():
    # The optimum of -sum(y log softmax) for a label is p = mean image / its pixel sum,
    # so p / max(p) is the class-mean image scaled to a peak of 1. Full batches: no SGD noise;
    # the shared bias sees every class, so lr * batch * pixel mass must stay small.
    images, labels = small_set()
    model = InvertedGenerator(InvertedConfig("softmax"))
    train_inverted(model=model, images=images, labels=labels, lr=0.005, batch_size=200,
                   steps=1500, seed=0)
    means = class_means(images, labels)
    target = means / means.amax(1, keepdim=True)
    got = model.intensities(torch.eye(10)).detach()
    assert (got - target).abs().max() < 1e-3


def test_sigmoid_variant_reaches_class_means():
    images, labels = small_set(1)
    model = InvertedGenerator(InvertedConfig("sigmoid"))
    train_inverted(model=model, images=images, labels=labels, lr=0.02, batch_size=200,
                   steps=1000, seed=0)
    got = model.intensities(torch.eye(10)).detach()
    assert (got - class_means(images, labels)).abs().max() < 0.01


def test_loss_is_the_seeds_summed_cross_entropy():
    model = InvertedGenerator(InvertedConfig("softmax"))
    y = torch.rand(3, 784)
    logits = model(torch.eye(10)[:3])  # zeros: uniform softmax
    expected = -(y * torch.log(torch.full((3, 784), 1 / 784))).sum()
    assert torch.allclose(model.loss(logits, y), expected)
