"""The digit classifier: the judge that scores generated digits, and the fresh classifier
that Classification Accuracy Score (mnistgen.scoring) trains on a row of samples.

Images are float (N, 1, 28, 28) in [-1, 1] (mnistgen.images.to_model_input).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mnistgen.data import training_images
from mnistgen.distributed import World
from mnistgen.models import Judge, JudgeConfig, gaussian_blur
from mnistgen.params import ParamsError, RunParams, field, precision_field
from mnistgen.runtime import autocast, fast_layout, inference_batch

TEST_ACCURACY = "test_accuracy"  # the judge's score in metrics/judge.json (final/<it> in MLflow)


@dataclass
class JudgeParams(RunParams):
    """params.yaml's `train_judge` section."""
    epochs: int = field(lo=1, hi=100)
    batch_size: int = field(lo=1, hi=65536)
    lr: float = field(above=0.0, hi=10.0, doc="peak of the one-cycle schedule")
    weight_decay: float = field(lo=0.0, hi=1.0)
    channels: list[int] = field(lo=1, hi=1024, doc="conv stages, each halving the image")
    feature_dim: int = field(lo=2, hi=4096, doc="penultimate layer: Fréchet distance's space")
    shift: int = field(lo=0, hi=6, doc="random translation in pixels (augmentation)")
    smooth: float = field(lo=0.0, hi=1.0, doc="share of each batch resampled or blurred (augmentation)")
    noise: float = field(lo=0.0, hi=64.0, doc="pixel noise of up to N grey levels (augmentation)")
    input_blur: float = field(lo=0.0, hi=3.0, doc="sigma of the judge's fixed low-pass front end; 0 = none")
    pool: str = field(choices=("max", "blur"), doc="blur = anti-aliased downsampling (shift-robust)")
    consistency: float = field(lo=0.0, hi=10.0, doc="weight of the feature-drift term; 0 = off")
    precision: str = precision_field()
    train_limit: int = field(lo=0, doc="use only the first N training images; 0 = all")
    log_every: int = field(lo=1)

    def check(self, section):
        super().check(section)
        if not 1 <= len(self.channels) <= 4:
            raise ParamsError(f"{section}.channels: expected 1 to 4 conv stages, got {self.channels}")
        self.check_batch(section, self.batch_size, training_images(self.train_limit))

    def model_config(self) -> JudgeConfig:
        return JudgeConfig(channels=list(self.channels), feature_dim=self.feature_dim,
                           input_blur=self.input_blur, pool=self.pool)

    def steps(self, n_images: int) -> int:
        return self.epochs * (n_images // self.batch_size)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels (zero = background -1 fill)."""
    if max_shift == 0:
        return x
    n = x.shape[0]
    padded = F.pad(x, [max_shift] * 4, value=-1.0)  # (N, 1, 28+2s, 28+2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen).to(x.device)
    steps = torch.arange(28, device=x.device)
    rows = (dy[:, None] + steps[None, :])  # (N, 28)
    cols = (dx[:, None] + steps[None, :])
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded[idx, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def smooth_and_noise(x: torch.Tensor, *, smooth: float, noise: float,
                     gen: torch.Generator) -> torch.Tensor:
    """Harmless changes, so the judge's features stop telling them apart (see
    mnistgen.transforms): a `smooth` share of the batch is resampled 28 -> s -> 28 (s drawn
    from 20..36, bilinear) or blurred (sigma drawn from 0.3..1.0), and every image gets pixel
    noise of up to `noise` grey levels (of 255). x (N, 1, 28, 28) in [-1, 1]."""
    n = len(x)
    if smooth > 0:
        import torchvision.transforms.v2.functional as TF  # training only: spare other stages it

        picked = torch.rand(n, generator=gen) < smooth
        resample = picked & (torch.rand(n, generator=gen) < 0.5)
        blurred = picked & ~resample
        size = int(torch.randint(20, 37, (1,), generator=gen))
        sigma = float(0.3 + 0.7 * torch.rand(1, generator=gen))
        x = x.clone()
        if resample.any():
            idx = resample.nonzero().squeeze(1).to(x.device)
            x[idx] = TF.resize(TF.resize(x[idx], [size, size], antialias=True), [28, 28], antialias=True)
        if blurred.any():
            idx = blurred.nonzero().squeeze(1).to(x.device)
            x[idx] = gaussian_blur(x[idx], 3, sigma)
    if noise > 0:
        std = noise / 127.5 * torch.rand(n, 1, 1, 1, generator=gen)
        x = (x + std.to(x.device) * torch.randn(x.shape, generator=gen).to(x.device)).clamp(-1, 1)
    return x


PAIR_SHARE = 0.25  # share of each batch seen twice by the consistency term (+25% compute)


def harmless_copy(x: torch.Tensor, *, noise: float, gen: torch.Generator) -> torch.Tensor:
    """x (N, 1, 28, 28) changed as a person would hardly see: shifted by up to 1 pixel, then
    resampled 28 -> s -> 28 or blurred (smooth_and_noise with every image picked), plus noise."""
    return smooth_and_noise(random_shift(x, 1, gen), smooth=1.0, noise=noise, gen=gen)


def feature_drift(features: torch.Tensor, changed: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Mean squared move of the features (M, D) -> changed (M, D), each dimension in units of
    its batch variance `spread` (D,): scale-free, like the Fréchet distance that reads these
    features, so shrinking all features cannot lower it."""
    return ((changed - features) ** 2 / spread).mean()


def classify_and_hold(trained, x, y, *, weight: float, noise: float, gen, device, precision):
    """Cross-entropy on the batch x (N, 1, 28, 28) plus `weight` x the feature drift of its
    first PAIR_SHARE under harmless_copy; one forward pass through `trained` for both."""
    m = max(1, int(len(x) * PAIR_SHARE))
    pairs = harmless_copy(x[:m], noise=noise, gen=gen)
    with autocast(device, precision):
        logits, features = trained(torch.cat([x, pairs]), with_features=True)
    logits, features = logits.float(), features.float()
    spread = features[:len(x)].var(0).detach() + 1e-4  # (D,); the floor keeps dead units finite
    drift = feature_drift(features[:m], features[len(x):], spread)
    return F.cross_entropy(logits[:len(x)], y) + weight * drift


def augment(x, *, shift: int, smooth: float, noise: float, gen):
    """A training batch x (N, 1, 28, 28) randomly shifted, resampled or blurred, and noised."""
    x = random_shift(x, shift, gen)
    return smooth_and_noise(x, smooth=smooth, noise=noise, gen=gen) if smooth or noise else x


def classifier_loss(trained, x, y, *, consistency: float, noise: float, gen, device, precision):
    """The objective of one update: maximise log p(label | image) of the classifier, plus
    (consistency > 0) keep its features where they are when the image changes harmlessly."""
    if consistency > 0:
        return classify_and_hold(trained, x, y, weight=consistency, noise=noise, gen=gen,
                                 device=device, precision=precision)
    with autocast(device, precision):
        return F.cross_entropy(trained(x).float(), y)


@torch.no_grad()
def accuracy(model, images, labels, device) -> float:
    model.eval()
    batch = inference_batch(device)
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(images[i:i + batch].to(device))
        correct += (logits.argmax(1).cpu() == labels[i:i + batch]).sum().item()
    return correct / len(images)


def train_classifier(*, model, images, labels, epochs, batch_size, lr, weight_decay, shift,
                     device, seed, precision="fp32", log_every=50, on_log=None,
                     world: World = World(), smooth: float = 0.0, noise: float = 0.0,
                     consistency: float = 0.0):
    """Minimise cross-entropy with AdamW under a one-cycle schedule; images (N,1,28,28).
    With `consistency` > 0, add the feature drift under harmless changes (feature_drift).
    Under torchrun each rank trains on its slice of every global batch. on_log(step, loss)
    every `log_every` steps. Returns the number of steps."""
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    if batch_size > n:
        raise ParamsError(f"batch_size {batch_size} is larger than the {n} training images")
    if batch_size % world.size:
        raise ParamsError(f"batch_size {batch_size} must divide evenly among {world.size} processes")
    steps_per_epoch = n // batch_size
    # on a GPU the whole set (188 MB as float) moves there once, so batches never cross the bus
    images, labels = images.to(device), labels.to(device)
    trained = world.wrap(fast_layout(model), device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size].to(device)
            x = world.shard(augment(images[idx], shift=shift, smooth=smooth, noise=noise, gen=gen))
            y = world.shard(labels[idx])
            # objective: cross-entropy, plus consistency x feature drift under harmless changes
            loss = classifier_loss(trained, x, y, consistency=consistency, noise=noise, gen=gen,
                                   device=device, precision=precision)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if on_log is not None and step % log_every == 0:
                on_log(step, loss.item())
    return step


def train_judge(*, params: JudgeParams, images, labels, device, precision: str,
                world: World = World(), on_log=None) -> tuple[Judge, int]:
    """A new judge (from the global torch seed) trained on images (N, 1, 28, 28)."""
    model = Judge(params.model_config()).to(device)
    steps = train_classifier(model=model, images=images, labels=labels, epochs=params.epochs,
                             batch_size=params.batch_size, lr=params.lr,
                             weight_decay=params.weight_decay, shift=params.shift, device=device,
                             seed=params.seed, precision=precision, log_every=params.log_every,
                             on_log=on_log, world=world, smooth=params.smooth, noise=params.noise,
                             consistency=params.consistency)
    return model, steps
