"""Stage train_gan: a class-conditional GAN (ask for a digit, get it).

Writes the generator (and its EMA), the discriminator and their configs to one checkpoint;
loss curves and in-training quality (judge accuracy, Fréchet distance) to CSV plots and
MLflow. A resume file, written every `checkpoint_every` steps (temporary file + rename),
lets a killed run continue where it stopped instead of starting over.

Usage: python -m stages.train_gan --data data/mnist.npz --judge models/judge.pt \
    --model models/gan.pt --losses plots/gan_losses.csv --quality plots/gan_quality.csv \
    --resume .resume/train_gan.pt
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import signal
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mnistgen import distributed, tracking
from mnistgen.data import load_arrays, sha256_file
from mnistgen.distributed import World
from mnistgen.images import grid, to_model_input, to_uint8
from mnistgen.judging import features_and_predictions, load_judge, quick_score
from mnistgen.metrics import frechet_distance
from mnistgen.models import Discriminator, GanConfig, Generator, PackedGenerator
from mnistgen.params import ParamsError, RunParams, field, load_section, precision_field
from mnistgen.progress import Progress
from mnistgen.runtime import (CheckpointError, atomic_write_bytes, autocast, configure_cuda,
                              fast_layout, load_checkpoint, pick_device, resolve_precision,
                              save_checkpoint, set_seed, set_threads)
from mnistgen.stage import Interrupted, TrainingError, parse_args, run


@dataclass
class GanParams(RunParams):
    arch: str = field("mlp", choices=("mlp", "conv"), doc="see mnistgen.models.GanConfig")
    latent_dim: int = field(64, lo=1, hi=4096)
    g_hidden: list[int] = field([256, 512, 1024], lo=1, hi=16384)
    d_hidden: list[int] = field([1024, 512, 256], lo=1, hi=16384)
    spectral_norm: bool = field(True, doc="spectral norm on every discriminator layer")
    mode_seeking: float = field(0.0, lo=0.0, hi=1e6,
                                doc="weight of the mode-seeking diversity term in G's loss; 0 = off")
    loss: str = field("hinge", choices=("hinge", "bce"), doc="bce = non-saturating")
    lr_g: float = field(2e-4, above=0.0, hi=1e30)
    lr_d: float = field(2e-4, above=0.0, hi=1e30)
    lr_schedule: str = field("constant", choices=("constant", "linear"),
                             doc="linear: both learning rates decay to 0 over training")
    beta1: float = field(0.5, lo=0.0, hi=0.9999)
    beta2: float = field(0.999, lo=0.0, hi=0.99999)
    batch_size: int = field(256, lo=2)
    precision: str = precision_field()
    epochs: int = field(20, lo=1, hi=10000)
    ema_decay: float = field(0.999, lo=0.0, hi=0.99999, doc="EMA of the generator; 0 = off")
    train_limit: int = field(0, lo=0, doc="use only the first N training images; 0 = all")
    log_every: int = field(50, lo=1)
    sample_every: int = field(500, lo=1, doc="log a fixed-noise grid to MLflow every N steps")
    eval_every: int = field(1000, lo=1, doc="judge accuracy and Fréchet distance every N steps")
    eval_samples: int = field(2000, lo=20)
    checkpoint_every: int = field(500, lo=1, doc="write the resume file every N steps")
    on_nan: str = field("stop", choices=("stop", "skip"),
                        doc="a non-finite loss stops the run, or skips that update")
    max_nan_skips: int = field(20, lo=1, doc="with on_nan: skip, give up after N in a row")

    def check(self, section):
        super().check(section)
        for key in ("g_hidden", "d_hidden"):
            if not getattr(self, key):
                raise ParamsError(f"{section}.{key}: list at least one layer width")
        if self.arch == "conv" and (len(self.g_hidden) not in (2, 3) or len(self.d_hidden) != 3):
            raise ParamsError(f"{section}: arch conv takes g_hidden [channels at 7x7, at 14x14"
                              f"(, at 28x28)] and d_hidden [channels at 14x14, at 7x7, feature width]")
        if self.mode_seeking and self.batch_size % 2:
            raise ParamsError(f"{section}.batch_size: mode_seeking pairs up samples; use an even "
                              f"batch (got {self.batch_size})")

    def model_config(self) -> GanConfig:
        return GanConfig(arch=self.arch, latent_dim=self.latent_dim, g_hidden=list(self.g_hidden),
                         d_hidden=list(self.d_hidden), spectral_norm=self.spectral_norm)

    def digest(self) -> str:
        """What a resume file must match (logging-only keys excluded)."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("log_every", "sample_every", "checkpoint_every", "threads")}
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
        self.precision = resolve_precision(params.precision, device)
        self.autocast = lambda: autocast(device, self.precision)
        self.step, self.losses, self.quality, self.run_id = 0, [], [], None
        self.last_losses = (math.nan, math.nan)  # (loss_d, loss_g) of the latest step

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
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def g_loss_fn(kind, fake_scores):
    return -fake_scores.mean() if kind == "hinge" else F.softplus(-fake_scores).mean()


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
        loss_d = d_loss_fn(p.loss, scores[:len(real)].float(), scores[len(real):].float())
    s.opt_d.zero_grad(set_to_none=True)
    d_ok = s.world.all_finite(loss_d)
    if d_ok:
        loss_d.backward()
        s.opt_d.step()
    # (2) G: maximise D's score of G(z, y) under label y (non-saturating / hinge generator
    # loss); with mode_seeking, also make two noises for one label draw different digits
    with s.autocast():
        loss_g = g_loss_fn(p.loss, s.D_train(fake, fake_labels).float())
        if p.mode_seeking:
            loss_g = loss_g + p.mode_seeking * mode_seeking_loss(fake.float(), z)
    s.opt_g.zero_grad(set_to_none=True)
    g_ok = s.world.all_finite(loss_g)
    if g_ok:
        loss_g.backward()
        s.opt_g.step()
        # warm-up: early on the EMA follows G closely instead of averaging in the random init
        update_ema(s.G_ema, s.G, min(p.ema_decay, (1 + s.step) / (10 + s.step)))
    return (loss_d.item() if d_ok else math.nan), (loss_g.item() if g_ok else math.nan)


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


@torch.no_grad()
def generate(G, labels: torch.Tensor, z: torch.Tensor, batch: int = 1000) -> np.ndarray:
    """uint8 (N, 784) images of the requested labels, from fixed noise z (N, latent)."""
    G.eval()
    device = next(G.parameters()).device
    out = [to_uint8(G(z[i:i + batch].to(device), labels[i:i + batch].to(device)))
           for i in range(0, len(labels), batch)]
    return np.concatenate(out)


def balanced_labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 10


class Monitor:
    """Rank 0's view of training: loss curves, fixed-noise grids and judge scores, to the
    CSV plots and MLflow. On other ranks every call is a no-op."""

    def __init__(self, *, params: GanParams, judge, arrays: dict, limit: int, active: bool):
        self.p, self.judge, self.active = params, judge, active
        self.progress = None  # made at the first step, when the total is known
        if not active:
            return
        fixed = torch.Generator().manual_seed(params.seed + 2)  # the same material every run
        self.eval_labels = balanced_labels(params.eval_samples)
        self.eval_z = torch.randn(params.eval_samples, params.latent_dim, generator=fixed)
        self.grid_labels = balanced_labels(100).view(10, 10).t().reshape(-1)  # row = digit
        ref_idx = torch.randperm(limit, generator=fixed)[:params.eval_samples].numpy()
        self.ref_features, _ = features_and_predictions(judge, arrays["train_images"][:limit][ref_idx])
        # what real test digits score against the same reference with as few samples: the
        # curve's floor (Fréchet distance is biased upward at small sample counts)
        test_idx = torch.randperm(len(arrays["test_images"]), generator=fixed)[:params.eval_samples]
        test_features, _ = features_and_predictions(judge, arrays["test_images"][test_idx.numpy()])
        self.floor = frechet_distance(self.ref_features, test_features)

    def after_step(self, s: GanState, step: int, total: int, loss_d: float, loss_g: float):
        if not self.active:
            return
        import mlflow

        p, last = self.p, step == total
        if self.progress is None:
            self.progress = Progress("train_gan", total=total, per_step=p.batch_size)
        self.progress.update(step, loss_d=loss_d, loss_g=loss_g)
        if step % p.log_every == 0 or last:
            s.losses.append([step, round(loss_d, 6), round(loss_g, 6)])
            mlflow.log_metrics({"loss_d": loss_d, "loss_g": loss_g}, step=step)
        if step % p.sample_every == 0 or last:
            picture = grid(generate(s.G_ema, self.grid_labels, self.eval_z[:100]), rows=10)
            tracking.log_image(picture, "fixed_noise_grid", step)
        if step % p.eval_every == 0 or last:
            fakes = generate(s.G_ema, self.eval_labels, self.eval_z)
            q = quick_score(self.judge, fakes, self.eval_labels.numpy(), self.ref_features)
            s.quality.append([step, step * p.batch_size, round(q["accuracy"], 5), round(q["frechet"], 4),
                              round(self.floor, 4)])
            mlflow.log_metrics({"eval_accuracy": q["accuracy"], "eval_frechet": q["frechet"],
                                "eval_frechet_floor": self.floor}, step=step)
            self.progress.values.update(judge_accuracy=q["accuracy"], frechet=q["frechet"])
        if last:
            self.progress.done()


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


class CtrlC:
    """The first Ctrl-C asks the loop to stop after the step it is in (so the resume file
    holds a whole step and a resumed run gives the same bytes); a second one stops at once.
    Only in a single process's main thread: under torchrun, ranks must not stop apart."""

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = False

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGINT, self.previous)


def train_loop(s: GanState, *, images, labels, p: GanParams, world: World, monitor: Monitor,
               resume_path: Path, digest: str) -> None:
    """Epochs of global batches; each rank trains on its slice of every batch."""
    steps_per_epoch = len(images) // p.batch_size
    total, streak = p.epochs * steps_per_epoch, 0
    with CtrlC(active=world.size == 1) as ctrl_c:
        while s.step < total:
            _one_step(s, images=images, labels=labels, p=p, world=world, total=total,
                      steps_per_epoch=steps_per_epoch)
            streak = check_finite(*s.last_losses, s.step, streak, p)
            if streak == 0:
                monitor.after_step(s, s.step, total, *s.last_losses)
            if ctrl_c.requested:
                s.save(resume_path, digest)
                raise Interrupted(f"interrupted at step {s.step}/{total}; the resume file holds "
                                  f"it: rerun (`dvc repro`) to continue from there")
            if world.is_main and s.step % p.checkpoint_every == 0 and s.step < total:
                s.save(resume_path, digest)


def _one_step(s: GanState, *, images, labels, p: GanParams, world: World, total: int,
              steps_per_epoch: int) -> None:
    """One global batch: its images, fresh noise, one D and one G update; s.step advances."""
    epoch, pos = divmod(s.step, steps_per_epoch)
    # the epoch's order depends on (seed, epoch) only, so a resumed run sees the same batches
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(p.seed * 100003 + epoch))
    idx = world.shard(order[pos * p.batch_size:(pos + 1) * p.batch_size]).to(images.device)
    z = world.shard(torch.randn(p.batch_size, p.latent_dim, generator=s.noise)).to(images.device)
    s.G.train()
    set_learning_rates(s, p, s.step / total)
    s.last_losses = gan_step(s, images[idx], labels[idx], z, p)
    s.step += 1


def save_outputs(s: GanState, p: GanParams, *, model_path: Path, losses_path: Path,
                 quality_path: Path) -> None:
    import mlflow

    save_checkpoint(model_path, kind="gan", config=asdict(p.model_config()),
                    models={"generator": s.G_ema.cpu(), "generator_raw": s.G.cpu(),
                            "discriminator": s.D.cpu()},
                    extra={"params": asdict(p), "step": s.step})
    write_csv(losses_path, ["step", "loss_d", "loss_g"], s.losses)
    write_csv(quality_path, ["step", "images_seen", "accuracy", "frechet", "frechet_floor"], s.quality)
    mlflow.set_tag("checkpoint_sha256", sha256_file(model_path))
    example = torch.cat([F.one_hot(torch.arange(4), 10).float(),
                         torch.randn(4, p.latent_dim, generator=torch.Generator().manual_seed(0))], 1)
    tracking.log_model(PackedGenerator(s.G_ema.eval()), name="generator", example=example.numpy(),
                       registered_name="draw-mnist-cgan")


def train_gan(*, params: GanParams, data: Path, judge_path: Path, model_path: Path,
              losses_path: Path, quality_path: Path, resume_path: Path) -> dict:
    set_seed(params.seed)
    set_threads(params.threads)
    device = pick_device(params.device)
    world = distributed.init(device)
    device = distributed.local_device(device, world)
    configure_cuda(device)
    arrays = load_arrays(data)
    limit = params.train_limit or len(arrays["train_images"])
    images = to_model_input(arrays["train_images"][:limit]).to(device)  # (N, 1, 28, 28) in [-1, 1]
    labels = torch.as_tensor(arrays["train_labels"][:limit]).long().to(device)
    if params.batch_size > len(images):
        raise ParamsError(f"train_gan.batch_size {params.batch_size} is larger than the "
                          f"{len(images)} training images")
    if params.batch_size % world.size:
        raise ParamsError(f"train_gan.batch_size {params.batch_size} must divide evenly among "
                          f"{world.size} processes")
    if params.mode_seeking and (params.batch_size // world.size) % 2:
        raise ParamsError(f"train_gan.mode_seeking pairs up each process's samples: batch_size "
                          f"{params.batch_size} / {world.size} processes must be even")
    judge = load_judge(judge_path, device)
    if world.is_main:
        tracking.check_store(tracking.tracking_uri())  # before any training: fail fast

    state, digest = GanState(params, device, world), params.digest()
    resumed = try_resume(state, resume_path, digest)
    monitor = Monitor(params=params, judge=judge, arrays=arrays, limit=limit, active=world.is_main)
    run = (tracking.start_run(stage="train_gan", params=asdict(params), run_id=state.run_id)
           if world.is_main else contextlib.nullcontext())
    with run as active:
        if world.is_main:
            state.run_id = active.info.run_id
            tracking.tag_run(resumed_from_step=str(state.step) if resumed else None,
                             world_size=str(world.size), precision=state.precision)
            if not resumed:
                tracking.log_mnist_input(data)
        try:
            train_loop(state, images=images, labels=labels, p=params, world=world, monitor=monitor,
                       resume_path=resume_path, digest=digest)
        except TrainingError as err:  # the run ends FAILED; say why where the user looks
            if world.is_main:
                tracking.tag_run(error=str(err))
            raise
        except Interrupted as err:  # Ctrl-C: MLflow's KILLED, with where it stopped
            import mlflow

            tracking.tag_run(error=str(err))
            mlflow.end_run(status="KILLED")
            raise
        if world.is_main:
            save_outputs(state, params, model_path=model_path, losses_path=losses_path,
                         quality_path=quality_path)
    world.barrier()
    if world.is_main:
        resume_path.unlink(missing_ok=True)  # finished: the next run starts afresh
    distributed.shutdown()
    return {"steps": state.step, "resumed": resumed, "world": world.size,
            "final_quality": state.quality[-1] if state.quality else None}


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
        print("train_gan: resume file is for other params; starting over", file=sys.stderr)
        return False
    state.load(payload)
    print(f"train_gan: resuming from step {state.step}", file=sys.stderr)
    return True


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def main(argv=None):
    args = parse_args(__doc__, ["data", "judge", "model", "losses", "quality", "resume"], argv)
    params = load_section(args.params, "train_gan", GanParams)
    result = train_gan(params=params, data=Path(args.data), judge_path=Path(args.judge),
                       model_path=Path(args.model), losses_path=Path(args.losses),
                       quality_path=Path(args.quality), resume_path=Path(args.resume))
    if result["final_quality"] is None:  # not rank 0
        return
    step, seen, acc, fd, floor = result["final_quality"]
    print(f"train_gan: {result['steps']} steps{' (resumed)' if result['resumed'] else ''}; "
          f"judge accuracy {acc:.4f}, Fréchet distance {fd:.3f} (real test digits: {floor:.3f}) "
          f"on {params.eval_samples} samples")


if __name__ == "__main__":
    sys.exit(run("train_gan", main))
