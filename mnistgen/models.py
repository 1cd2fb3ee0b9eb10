"""Every model of the pipeline, each rebuilt from a plain config dict.

Images are float tensors (N, 1, 28, 28) in [-1, 1] for the judge and the GAN;
the inverted generator works on flat (N, 784) intensities in [0, 1], as in the seed.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from mnistgen.runtime import CheckpointError


# ---------------------------------------------------------------- the judge


# The configs have no defaults: params.yaml holds them, and a checkpoint stores its config.


@dataclass
class JudgeConfig:
    channels: list[int]
    feature_dim: int  # the penultimate layer: the space Fréchet distance lives in
    input_blur: float  # sigma of a fixed Gaussian blur on every input (0 = none): a low-pass
                       # front end, so stroke rendering (resampling, slight blur) matters less
    pool: str  # "max" (2x2 max pooling) or "blur" (anti-aliased: see BlurDown), so that a
               # 1-pixel shift moves the features less


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """torchvision's gaussian_blur (same kernel, same reflect padding, same conv: the same
    numbers), without importing torchvision, which costs every stage process a second.
    x (N, C, H, W) float -> (N, C, H, W)."""
    lim = (size - 1) / (2.0 * math.sqrt(2.0))
    taps = torch.softmax(torch.linspace(-lim, lim, steps=size, dtype=x.dtype, device=x.device)
                         .div(sigma).pow(2).neg(), dim=0)
    kernel = (taps.unsqueeze(-1) * taps).expand(x.shape[1], 1, size, size)
    padded = F.pad(x, [size // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=x.shape[1])


class BlurDown(nn.Module):
    """Anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant
    Again"): after a 2x2 max at stride 1, a fixed [1 2 1] x [1 2 1] / 16 blur at stride 2.
    (N, C, H, W) -> (N, C, ceil(H / 2), ceil(W / 2))."""

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :] / 16).expand(channels, 1, 3, 3).clone()
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x):
        padded = F.pad(x, [1, 1, 1, 1], mode="replicate")
        return F.conv2d(padded, self.kernel, stride=2, groups=len(self.kernel))


def _downsample(pool: str, channels: int) -> list[nn.Module]:
    """Halve the side: 28 -> 14 -> 7 -> 3 (4 -> 2 -> 1)."""
    if pool == "max":
        return [nn.MaxPool2d(2)]
    return [nn.MaxPool2d(2, stride=1), BlurDown(channels)]  # 28 -> 27 -> 14, 7 -> 6 -> 3


class Judge(nn.Module):
    """Small CNN: [conv-BN-ReLU, maxpool] per stage -> features (N, feature_dim) -> logits."""

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 1
        for c_out in cfg.channels:  # 28 -> 14 -> 7 -> 3
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), *_downsample(cfg.pool, c_out)]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        side = 28 >> len(cfg.channels)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, cfg.feature_dim),
                                      nn.ReLU(inplace=True))
        self.head = nn.Linear(cfg.feature_dim, 10)

    def embed(self, x):  # (N, 1, 28, 28) -> (N, feature_dim)
        if self.cfg.input_blur > 0:
            x = gaussian_blur(x, 5, self.cfg.input_blur)
        return self.features(self.conv(x))

    def forward(self, x, with_features: bool = False):  # -> (N, 10) logits [, (N, feature_dim)]
        features = self.embed(x)
        logits = self.head(features)
        return (logits, features) if with_features else logits


# ---------------------------------------------------------------- the seed's inverted classifier


@dataclass
class InvertedConfig:
    output: str  # "softmax" over the 784 pixels (the seed) or a per-pixel "sigmoid"


class InvertedGenerator(nn.Module):
    """Softmax regression turned around: one-hot label (N, 10) -> W (10x784) + b -> (N, 784)."""

    def __init__(self, cfg: InvertedConfig):
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(10, 784)
        nn.init.zeros_(self.linear.weight)  # the seed starts from zeros
        nn.init.zeros_(self.linear.bias)

    def forward(self, onehot):  # logits (N, 784)
        return self.linear(onehot)

    def loss(self, logits, target):
        """Sum over the batch as the seed does: -sum(y * log softmax) or the per-pixel BCE."""
        if self.cfg.output == "softmax":
            return -(target * F.log_softmax(logits, dim=1)).sum()
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")

    def intensities(self, onehot):
        """(N, 784) in [0, 1]. Softmax: p / max(p) per image, so the brightest pixel is 1."""
        logits = self(onehot)
        if self.cfg.output == "softmax":
            p = F.softmax(logits, dim=1)
            return p / p.max(dim=1, keepdim=True).values
        return torch.sigmoid(logits)


# ---------------------------------------------------------------- the conditional GAN


@dataclass
class GanConfig:
    """mlp: hidden widths. conv: g_hidden = channels at 7x7, 14x14 (optionally 28x28), then
    a 3x3 conv to 1 channel; d_hidden = conv channels at 14x14, 7x7, then the width of the
    projected feature."""
    arch: str  # "mlp" or "conv"
    latent_dim: int
    g_hidden: list[int]
    d_hidden: list[int]
    spectral_norm: bool
    # conv G: every BatchNorm also takes a per-class gain and bias. False for checkpoints
    # written before it existed, so they still load.
    conditional_bn: bool = False


def _mlp(sizes, act, norm=None, sn=False):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(a, b)
        layers.append(spectral_norm(lin) if sn else lin)
        if norm is not None:
            layers.append(norm(b))
        layers.append(act())
    return nn.Sequential(*layers)


# Nearest x2 upsampling, then a 3x3 conv (padding 1), is one 4x4 transposed conv at stride 2:
# each output pixel's 3x3 window covers only 2x2 distinct input pixels, so 4 taps per pixel do
# the work of 9 (4/9 of the FLOPs) and the upsampled map is never built. Tap k of the 4x4
# kernel, along each axis, sums the 3x3 taps marked in row k: output pixel 2i takes input i-1
# with tap 0 and input i with taps 1+2; pixel 2i+1 takes input i with taps 0+1 and i+1 with 2.
_UPSAMPLE_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(nearest_upsample_x2(x)) for a 3x3 conv with padding 1, computed as one transposed
    conv: the same numbers up to float rounding, and the same parameters (the 3x3 weight
    stays what trains and what checkpoints hold). (N, C_in, H, W) -> (N, C_out, 2H, 2W)."""
    taps = _UPSAMPLE_TAPS.to(conv.weight)
    kernel = torch.einsum("ky,oiyx,lx->iokl", taps, conv.weight, taps)  # (C_in, C_out, 4, 4)
    return F.conv_transpose2d(x, in_layout_of(conv.weight, kernel), conv.bias, stride=2, padding=1)


def in_layout_of(weight: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """t (4-d) in the memory layout of the conv weight `weight`: channels-last after
    runtime.fast_layout, else the default. A map or kernel in another layout than its conv's
    weights costs a reorder per pass (measured: G's step 6% slower in fp32 on AVX2)."""
    channels_last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class Generator(nn.Module):
    """(z (N, latent), labels (N,)) -> images (N, 1, 28, 28) in [-1, 1]; label by embedding."""

    def __init__(self, cfg: GanConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(10, cfg.latent_dim)
        if cfg.arch == "mlp":
            self.body = _mlp([2 * cfg.latent_dim] + list(cfg.g_hidden),
                             lambda: nn.LeakyReLU(0.2, inplace=True), norm=nn.BatchNorm1d)
            self.out = nn.Linear(cfg.g_hidden[-1], 784)
            return
        channels = list(cfg.g_hidden)  # at 7x7, 14x14 (, 28x28)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.project = nn.Linear(2 * cfg.latent_dim, channels[0] * 49)
        norm = ClassBatchNorm if cfg.conditional_bn else nn.BatchNorm2d
        self.norms = nn.ModuleList(norm(c) for c in channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(channels, channels[1:]))
        self.out = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, z, labels):
        x = torch.cat([z, self.embed(labels)], dim=1)
        if self.cfg.arch == "mlp":
            return torch.tanh(self.out(self.body(x))).view(-1, 1, 28, 28)
        h = self.project(x).unflatten(1, (self.cfg.g_hidden[0], 7, 7))  # (N, C, 7, 7)
        h = self.act(self._norm(0, in_layout_of(self.out.weight, h), labels))
        for i, conv in enumerate(self.convs, 1):  # 7 -> 14 (-> 28), nearest upsampling
            h = self.act(self._norm(i, upsample_conv(h, conv), labels))
        if h.shape[-1] < 28:
            return torch.tanh(upsample_conv(h, self.out))
        return torch.tanh(self.out(h))

    def _norm(self, i, h, labels):
        return self.norms[i](h, labels) if self.cfg.conditional_bn else self.norms[i](h)


class ClassBatchNorm(nn.Module):
    """BatchNorm whose gain and bias depend on the digit asked for (conditional BN, as in
    de Vries et al. 2017 / BigGAN): (N, C, H, W), labels (N,) -> (N, C, H, W). Starts as a
    plain BatchNorm (gain 1, bias 0 for every class); costs 2C numbers per class."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(10, channels)
        self.bias = nn.Embedding(10, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, h, labels):
        return self.norm(h) * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


class Discriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018): score = psi(h) + <embed(y), h>."""

    def __init__(self, cfg: GanConfig):
        super().__init__()
        self.cfg = cfg
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        if cfg.arch == "mlp":
            self.body = nn.Sequential(nn.Flatten(), _mlp([784] + list(cfg.d_hidden), act,
                                                         sn=cfg.spectral_norm))
        else:
            c14, c7, width = cfg.d_hidden
            sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
            self.body = nn.Sequential(  # (N, 1, 28, 28) -> 14x14 -> 7x7 -> (N, width)
                sn(nn.Conv2d(1, c14, 4, 2, 1)), act(), sn(nn.Conv2d(c14, c7, 4, 2, 1)), act(),
                nn.Flatten(), sn(nn.Linear(c7 * 49, width)), act())
        last = nn.Linear(cfg.d_hidden[-1], 1)
        embed = nn.Embedding(10, cfg.d_hidden[-1])
        self.psi = spectral_norm(last) if cfg.spectral_norm else last
        self.embed = spectral_norm(embed) if cfg.spectral_norm else embed

    def forward(self, x, labels):  # -> (N,) unbounded scores
        h = self.body(x)
        return self.psi(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


class PackedGenerator(nn.Module):
    """One-tensor interface for MLflow: (N, 10 + latent) = [one-hot | z] -> (N, 784) in [0, 1]."""

    def __init__(self, generator: Generator):
        super().__init__()
        self.generator = generator

    def example(self, n: int):
        """float32 (n, 10 + latent) input: digits 0..n-1 one-hot, then seeded noise."""
        z = torch.randn(n, self.generator.cfg.latent_dim, generator=torch.Generator().manual_seed(0))
        return torch.cat([F.one_hot(torch.arange(n) % 10, 10).float(), z], 1).numpy()

    def forward(self, packed):
        labels = packed[:, :10].argmax(dim=1)
        images = self.generator(packed[:, 10:], labels)
        return (images.reshape(-1, 784) + 1) / 2


# ---------------------------------------------------------------- rebuilding from a config

BUILDERS = {
    "judge": (JudgeConfig, Judge),
    "inverted": (InvertedConfig, InvertedGenerator),
    "generator": (GanConfig, Generator),
    "discriminator": (GanConfig, Discriminator),
}


def build(kind: str, config: dict) -> nn.Module:
    """The model a checkpoint's config describes; a config from other code (a key missing
    or unknown, e.g. a judge saved before `pool` existed) is a CheckpointError."""
    cfg_cls, model_cls = BUILDERS[kind]
    try:
        cfg = cfg_cls(**config)
    except TypeError as err:
        raise CheckpointError(f"the checkpoint's {kind} config does not fit this code ({err}); "
                              f"retrain it with `dvc repro`") from err
    return model_cls(cfg)


def config_dict(model: nn.Module) -> dict:
    return dataclasses.asdict(model.cfg)
