"""The class-conditional GAN: its params, training state, losses, one update, the loop and
resume files. Nothing here logs: the loop calls `after_step` (e.g. mnistgen.gan_monitor)
and `save_resume`, so the stage, the benchmark and the sweep run the same code.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mnistgen.data import training_images
from mnistgen.distributed import World
from mnistgen.images import to_uint8
from mnistgen.models import Discriminator, GanConfig, Generator
from mnistgen.params import ParamsError, RunParams, field, precision_field
from mnistgen.runtime import (CheckpointError, CtrlC, Interrupted, TrainingError, autocast,
                              fast_layout, inference_batch, load_checkpoint, resolve_precision,
                              save_checkpoint)

# keys that change what is logged, not what is trained: a resume file ignores them
LOGGING_KEYS = ("log_every", "sample_every", "checkpoint_every", "threads")


@dataclass
class GanParams(RunParams):
    """params.yaml's `train_gan` section."""
    arch: str = field(choices=("mlp", "conv"), doc="see mnistgen.models.GanConfig")
    latent_dim: int = field(lo=1, hi=4096)
    g_hidden: list[int] = field(lo=1, hi=16384, doc="generator channels (conv) or widths (mlp)")
    d_hidden: list[int] = field(lo=1, hi=16384, doc="discriminator channels (conv) or widths (mlp)")
    spectral_norm: bool = field(doc="spectral norm on every discriminator layer")
    conditional_bn: bool = field(doc="conv G: each BatchNorm takes a per-class gain and bias")
    mode_seeking: float = field(lo=0.0, hi=1e6,
                                doc="weight of the mode-seeking diversity term in G's loss; 0 = off")
    loss: str = field(choices=("hinge", "bce", "rpgan"),
                      doc="bce = non-saturating; rpgan = relativistic pairing (real i vs fake i)")
    r1: float = field(lo=0.0, hi=1e6, doc="weight of the R1 penalty (squared gradient of D on real "
                                           "digits); 0 = off")
    r1_every: int = field(lo=1, hi=1000, doc="R1 on every N-th step only, weighted N times")
    lr_g: float = field(above=0.0, hi=1e30)
    lr_d: float = field(above=0.0, hi=1e30)
    lr_schedule: str = field(choices=("constant", "linear"),
                             doc="linear: both learning rates decay to 0 over training")
    beta1: float = field(lo=0.0, hi=0.9999)
    beta2: float = field(lo=0.0, hi=0.99999)
    batch_size: int = field(lo=2)
    precision: str = precision_field()
    epochs: int = field(lo=1, hi=10000)
    ema_decay: float = field(lo=0.0, hi=0.99999, doc="EMA of the generator; 0 = off")
    ema_warmup: float = field(lo=1.0, hi=1e9, doc="the EMA's decay at step t is min(ema_decay, "
                                                  "(1 + t) / (ema_warmup + t))")
    ema_bn_samples: int = field(lo=0, hi=1_000_000, doc="the EMA generator's BatchNorm statistics "
                                "measured on N of its own digits before it draws; 0 = G's, copied")
    train_limit: int = field(lo=0, doc="use only the first N training images; 0 = all")
    log_every: int = field(lo=1)
    sample_every: int = field(lo=1, doc="log a fixed-noise grid to MLflow every N steps")
    eval_every: int = field(lo=1, doc="judge accuracy and Fréchet distance every N steps")
    eval_samples: int = field(lo=20)
    checkpoint_every: int = field(lo=1, doc="write the resume file every N steps")
    on_nan: str = field(choices=("stop", "skip"),
                        doc="a non-finite loss stops the run, or skips that update")
    max_nan_skips: int = field(lo=1, doc="with on_nan: skip, give up after N in a row")

    def check(self, section):
        super().check(section)
        for key in ("g_hidden", "d_hidden"):
            if not getattr(self, key):
                raise ParamsError(f"{section}.{key}: list at least one layer width")
        if self.conditional_bn and self.arch != "conv":
            raise ParamsError(f"{section}.conditional_bn: only the conv generator has BatchNorms "
                              f"to condition; set arch: conv or conditional_bn: false")
        if self.arch == "conv" and (len(self.g_hidden) not in (2, 3) or len(self.d_hidden) != 3):
            raise ParamsError(f"{section}: arch conv takes g_hidden [channels at 7x7, at 14x14"
                              f"(, at 28x28)] and d_hidden [channels at 14x14, at 7x7, feature width]")
        if self.mode_seeking and self.batch_size % 2:
            raise ParamsError(f"{section}.batch_size: mode_seeking pairs up samples; use an even "
                              f"batch (got {self.batch_size})")
        self.check_batch(section, self.batch_size, training_images(self.train_limit))

    def check_world(self, world: World) -> None:
        """What only the stage knows: how many processes share a batch (under torchrun)."""
        if self.batch_size % world.size:
            raise ParamsError(f"train_gan.batch_size {self.batch_size} must divide evenly among "
                              f"{world.size} processes")
        if self.mode_seeking and (self.batch_size // world.size) % 2:
            raise ParamsError(f"train_gan.mode_seeking pairs up each process's samples: batch_size "
                              f"{self.batch_size} / {world.size} processes must be even")

    def model_config(self) -> GanConfig:
        return GanConfig(arch=self.arch, latent_dim=self.latent_dim, g_hidden=list(self.g_hidden),
                         d_hidden=list(self.d_hidden), spectral_norm=self.spectral_norm,
                         conditional_bn=self.conditional_bn)

    def digest(self) -> str:
        """What a resume file must match (logging-only keys excluded)."""
        keep = {k: v for k, v in asdict(self).items() if k not in LOGGING_KEYS}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class GanState:
    """Everything training changes: models, optimizers, noise generator, step, curves.

    G and D are the plain modules (saved, sampled); G_train and D_train are what the update
    runs through: the same modules, wrapped in DistributedDataParallel under torchrun.
    """

    def __init__(self, params: GanParams, device: torch.device, world: World = World()):
        cfg = params.model_config()
        self.G = fast_layout(Generator(cfg).to(device))
        self.D = fast_layout(Discriminator(cfg).to(device))
        self.G_ema = copy.deepcopy(self.G).eval()
        self.world = world
        self.G_train, self.D_train = world.wrap(self.G, device), world.wrap(self.D, device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=params.lr_g, betas=(params.beta1, params.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=params.lr_d, betas=(params.beta1, params.beta2))
        self.noise = torch.Generator().manual_seed(params.seed + 1)
        self.precision = resolve_precision(params.precision, device, model="gan")
        self.autocast = lambda: autocast(device, self.precision)
        self.step, self.losses, self.quality, self.run_id = 0, [], [], None
        self.last_losses = (math.nan, math.nan)  # (loss_d, loss_g) of the latest step
        self.epoch_order = (-1, None)  # (epoch, its permutation of the training images)

    def save(self, path: Path, digest: str) -> None:
        save_checkpoint(path, kind="gan_resume", config={"digest": digest},
                        models={"G": self.G, "D": self.D, "G_ema": self.G_ema,
                                "opt_g": self.opt_g, "opt_d": self.opt_d},
                        extra={"step": self.step, "noise": self.noise.get_state(),
                               "losses": self.losses, "quality": self.quality,
                               "run_id": self.run_id or ""})

    def load(self, payload: dict) -> None:
        for name in ("G", "D", "G_ema", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(payload["state"][name])
        self.noise.set_state(payload["noise"])
        self.step, self.losses, self.quality = payload["step"], payload["losses"], payload["quality"]
        self.run_id = payload["run_id"] or None


def d_loss_fn(kind, real_scores, fake_scores):
    if kind == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    if kind == "rpgan":  # relativistic pairing: real i should outscore fake i
        return F.softplus(fake_scores - real_scores).mean()
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def g_loss_fn(kind, fake_scores, real_scores=None):
    if kind == "hinge":
        return -fake_scores.mean()
    if kind == "rpgan":  # fake i should outscore real i (D's scores of real from its update)
        return F.softplus(real_scores - fake_scores).mean()
    return F.softplus(-fake_scores).mean()


def r1_penalty(D, real, labels):
    """Mescheder et al. 2018: the mean squared norm of D's gradient at real digits (pulls D
    flat where the data is: a zero-centred penalty)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(real, labels).sum(), real, create_graph=True)
    return grad.float().pow(2).sum(dim=(1, 2, 3)).mean()


def gan_step(s: GanState, real, labels, z, p: GanParams) -> tuple[float, float]:
    """One update of D, then of G, on real (B, 1, 28, 28), labels (B,), noise z (B, latent).

    An update whose loss is not finite (on any rank) is not applied; its loss comes back NaN.
    """
    # with mode_seeking, fakes i and i + B/2 share a label (D still sees real's class mix on average)
    fake_labels = paired(labels) if p.mode_seeking else labels
    with s.autocast():
        fake = s.G_train(z, fake_labels)
        # (1) D: minimise hinge/BCE loss: score real (x, y) high, generated (G(z, y), y) low
        scores = s.D_train(torch.cat([real, fake.detach()]), torch.cat([labels, fake_labels]))  # one pass
        real_scores = scores[:len(real)].float()
        loss_d = d_loss_fn(p.loss, real_scores, scores[len(real):].float())
        # (1b) with r1, on every r1_every-th step: keep D's gradient small at real digits
        if p.r1 and s.step % p.r1_every == 0:
            loss_d = loss_d + p.r1 / 2 * p.r1_every * r1_penalty(s.D_train, real, labels)
    s.opt_d.zero_grad(set_to_none=True)
    d_ok = s.world.all_finite(loss_d)
    if d_ok:
        loss_d.backward()
        s.opt_d.step()
    # (2) G: maximise D's score of G(z, y) under label y (non-saturating / hinge generator
    # loss); with mode_seeking, also make two noises for one label draw different digits.
    # D is not updated here: through the plain module with its weights frozen, the backward
    # computes D's input gradient only (no weight gradients, no all-reduce under torchrun)
    with s.autocast(), frozen(s.D):
        loss_g = g_loss_fn(p.loss, s.D(fake, fake_labels).float(), real_scores.detach())
        if p.mode_seeking:
            loss_g = loss_g + p.mode_seeking * mode_seeking_loss(fake.float(), z)
    s.opt_g.zero_grad(set_to_none=True)
    g_ok = s.world.all_finite(loss_g)
    if g_ok:
        loss_g.backward()
        s.opt_g.step()
        # warm-up: early on the EMA follows G closely instead of averaging in the random init
        update_ema(s.G_ema, s.G, min(p.ema_decay, (1 + s.step) / (p.ema_warmup + s.step)))
    return (loss_d.item() if d_ok else math.nan), (loss_g.item() if g_ok else math.nan)


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Within the block, the graph built through `model` has no edges to its weights."""
    flags = [q.requires_grad for q in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for q, flag in zip(model.parameters(), flags):
            q.requires_grad_(flag)


def paired(labels):
    """(B,) -> (B,): the first half's labels twice, so sample i and i + B/2 show one digit."""
    half = labels[:len(labels) // 2]
    return torch.cat([half, half])


def mode_seeking_loss(fake, z):
    """Mao et al. 2019: 1 / (image distance / noise distance) over pairs (i, i + B/2) of one
    label; small when different noise gives different digits."""
    half = len(z) // 2
    ratio = (fake[:half] - fake[half:]).abs().mean() / (z[:half] - z[half:]).abs().mean()
    return 1.0 / (ratio + 1e-5)


@torch.no_grad()
def update_ema(ema, model, decay):
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m, 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)


# batch of the passes that measure BatchNorm statistics: a constant, not the device's inference
# batch, since the statistics (an average of per-batch ones) depend on it
BN_STATS_BATCH = 256


@torch.no_grad()
def measure_bn_stats(G, *, samples: int, seed: int) -> None:
    """Standing statistics, in place: G's BatchNorm running means and variances become the
    average over `samples` of its own digits (classes in turn, noise seeded by `seed`).

    Why: the EMA generator's weights are an average of G's over the last steps, but its
    buffers are G's, copied (update_ema): statistics of another network's activations.
    Measured on the committed GAN: Fréchet 2.2x -> 1.1x the floor, precision 0.843 -> 0.864
    (docs/experiments.md). Training is unaffected: the next update_ema copies G's again."""
    norms = [m for m in G.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the passes, not a moving one
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    G.train()
    try:
        for start in range(0, samples, BN_STATS_BATCH):
            n = min(BN_STATS_BATCH, samples - start)
            z = torch.randn(n, G.cfg.latent_dim, generator=gen)
            G(z.to(device), balanced_labels(n).to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        G.eval()


def settle_ema(s: GanState, p: GanParams) -> None:
    """Make the EMA generator ready to draw: its own BatchNorm statistics (ema_bn_samples)."""
    if p.ema_bn_samples:
        measure_bn_stats(s.G_ema, samples=p.ema_bn_samples, seed=p.seed + 3)


@torch.no_grad()
def generate(G, labels: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """uint8 (N, 784) images of the requested labels, from fixed noise z (N, latent)."""
    G.eval()
    device = next(G.parameters()).device
    batch = inference_batch(device)
    out = [to_uint8(G(z[i:i + batch].to(device), labels[i:i + batch].to(device)))
           for i in range(0, len(labels), batch)]
    return np.concatenate(out)


def balanced_labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 10


def check_finite(loss_d: float, loss_g: float, step: int, streak: int, p: GanParams) -> int:
    """The number of non-finite steps in a row, or TrainingError when that must stop the run."""
    if math.isfinite(loss_d) and math.isfinite(loss_g):
        return 0
    if p.on_nan == "stop" or streak + 1 > p.max_nan_skips:
        raise TrainingError(
            f"non-finite loss at step {step} (loss_d={loss_d}, loss_g={loss_g}) with "
            f"lr_d={p.lr_d}, lr_g={p.lr_g}, loss={p.loss}, batch_size={p.batch_size}; lower the "
            f"learning rates, or set train_gan.on_nan: skip to drop such updates")
    print(f"train_gan: step {step}: non-finite loss, update skipped", file=sys.stderr)
    return streak + 1


def set_learning_rates(s: GanState, p: GanParams, progress: float) -> None:
    scale = 1.0 - progress if p.lr_schedule == "linear" else 1.0
    for opt, base in ((s.opt_g, p.lr_g), (s.opt_d, p.lr_d)):
        for group in opt.param_groups:
            group["lr"] = base * scale


def train_loop(s: GanState, *, images, labels, p: GanParams, world: World = World(),
               after_step=None, save_resume=None) -> None:
    """Epochs of global batches until s.step reaches the total; each rank trains on its
    slice of every batch. after_step(s, step, total, loss_d, loss_g) after each finite step;
    save_resume(s) every `checkpoint_every` steps (rank 0) and before a Ctrl-C stops the loop."""
    steps_per_epoch = len(images) // p.batch_size
    total, streak = p.epochs * steps_per_epoch, 0
    with CtrlC(active=world.size == 1) as ctrl_c:
        while s.step < total:
            train_step(s, images=images, labels=labels, p=p, world=world, total=total,
                       steps_per_epoch=steps_per_epoch)
            streak = check_finite(*s.last_losses, s.step, streak, p)
            if streak == 0 and after_step is not None:
                after_step(s, s.step, total, *s.last_losses)
            if ctrl_c.requested:
                if save_resume is not None:
                    save_resume(s)
                by = " by SIGTERM" if ctrl_c.signum == signal.SIGTERM else ""
                raise Interrupted(f"interrupted at step {s.step}/{total}{by}; the resume file holds "
                                  f"it: rerun (`dvc repro`) to continue from there", ctrl_c.signum)
            if (save_resume is not None and world.is_main and s.step % p.checkpoint_every == 0
                    and s.step < total):
                save_resume(s)


def train_step(s: GanState, *, images, labels, p: GanParams, world: World, total: int,
               steps_per_epoch: int) -> None:
    """One global batch: its images, fresh noise, one D and one G update; s.step advances."""
    epoch, pos = divmod(s.step, steps_per_epoch)
    order = epoch_order(s, epoch, images, p.seed)
    idx = world.shard(order[pos * p.batch_size:(pos + 1) * p.batch_size])
    z = world.shard(torch.randn(p.batch_size, p.latent_dim, generator=s.noise)).to(images.device)
    s.G.train()
    set_learning_rates(s, p, s.step / total)
    s.last_losses = gan_step(s, images[idx], labels[idx], z, p)
    s.step += 1


def epoch_order(s: GanState, epoch: int, images: torch.Tensor, seed: int) -> torch.Tensor:
    """The epoch's order of the training images, on their device, drawn once per epoch (not
    once per step). It depends on (seed, epoch) only, so a resumed run sees the same batches."""
    if s.epoch_order[0] != epoch:
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        s.epoch_order = (epoch, torch.randperm(len(images), generator=gen).to(images.device))
    return s.epoch_order[1]


def try_resume(state: GanState, path: Path, digest: str) -> bool:
    """Load the resume file if it belongs to these params; a damaged one is reported and
    set aside, never trusted."""
    if not path.exists():
        return False
    try:
        payload = load_checkpoint(path, "gan_resume")
    except CheckpointError as err:
        print(f"train_gan: ignoring unusable resume file: {err}", file=sys.stderr)
        path.replace(path.with_name(path.name + ".corrupt"))
        return False
    if payload["config"].get("digest") != digest:
        path.unlink()  # stale: its 17 MB would wait until this run wrote its own
        print("train_gan: resume file is for other params: removed; starting over", file=sys.stderr)
        return False
    state.load(payload)
    print(f"train_gan: resuming from step {state.step}", file=sys.stderr)
    return True


def remove_stale_resume(path: Path, p: GanParams) -> bool:
    """Remove a resume file that holds a stopped training of other params (what is left
    when those params' outputs come back from DVC's run cache, and train_gan never runs to
    clear it). A damaged one is left for train_gan to report. -> whether it was removed."""
    if not path.exists():
        return False
    try:
        digest = load_checkpoint(path, "gan_resume")["config"].get("digest")
    except CheckpointError:
        return False
    if digest == p.digest():
        return False
    path.unlink()
    return True


def save_model(s: GanState, p: GanParams, path: Path) -> None:
    """The checkpoint sampling and evaluation read: G's EMA ('generator', with its own
    BatchNorm statistics), raw G and D."""
    settle_ema(s, p)
    save_checkpoint(path, kind="gan", config=asdict(p.model_config()),
                    models={"generator": s.G_ema.cpu(), "generator_raw": s.G.cpu(),
                            "discriminator": s.D.cpu()},
                    extra={"params": asdict(p), "step": s.step})
