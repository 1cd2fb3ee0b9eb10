"""Stage train_judge: the CNN that scores generated digits (its test accuracy is a metric).

Usage: python -m stages.train_judge --data data/mnist.npz --model models/judge.pt \
           --metrics metrics/judge.json
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from mnistgen import distributed, tracking
from mnistgen.data import load_arrays
from mnistgen.distributed import World
from mnistgen.images import to_model_input
from mnistgen.models import Judge, JudgeConfig, config_dict
from mnistgen.params import ParamsError, RunParams, field, load_section, precision_field
from mnistgen.progress import Progress
from mnistgen.runtime import (autocast, configure_cuda, fast_layout, pick_device, resolve_precision,
                              save_checkpoint, set_seed, set_threads, write_json)
from mnistgen.stage import parse_args, run


@dataclass
class JudgeParams(RunParams):
    epochs: int = field(4, lo=1, hi=100)
    batch_size: int = field(128, lo=1, hi=65536)
    lr: float = field(3e-3, above=0.0, hi=10.0, doc="peak of the one-cycle schedule")
    weight_decay: float = field(1e-4, lo=0.0, hi=1.0)
    channels: list[int] = field([32, 64, 128], lo=1, hi=1024)
    feature_dim: int = field(128, lo=2, hi=4096)
    shift: int = field(2, lo=0, hi=6, doc="random translation in pixels (augmentation)")
    precision: str = precision_field()
    train_limit: int = field(0, lo=0, doc="use only the first N training images; 0 = all")
    log_every: int = field(50, lo=1)

    def check(self, section):
        super().check(section)
        if not 1 <= len(self.channels) <= 4:
            raise ParamsError(f"{section}.channels: expected 1 to 4 conv stages, got {self.channels}")


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


@torch.no_grad()
def accuracy(model, images, labels, device, batch=1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(images[i:i + batch].to(device))
        correct += (logits.argmax(1).cpu() == labels[i:i + batch]).sum().item()
    return correct / len(images)


def train_classifier(*, model, images, labels, epochs, batch_size, lr, weight_decay, shift,
                     device, seed, precision="fp32", log_every=50, on_log=None,
                     world: World = World()):
    """Minimise cross-entropy with AdamW under a one-cycle schedule; images (N,1,28,28).
    Under torchrun each rank trains on its slice of every global batch."""
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
            x = world.shard(random_shift(images[idx], shift, gen))
            y = world.shard(labels[idx])
            # objective: maximise log p(label | image) of the judge
            with autocast(device, precision):
                loss = F.cross_entropy(trained(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if on_log is not None and step % log_every == 0:
                on_log(step, loss.item())
    return step


def train_judge(*, params: JudgeParams, data: Path, model_path: Path, metrics_path: Path) -> dict:
    set_seed(params.seed)
    threads = set_threads(params.threads)
    device = pick_device(params.device)
    world = distributed.init(device)
    device = distributed.local_device(device, world)
    configure_cuda(device)
    precision = resolve_precision(params.precision, device)
    if world.is_main:
        tracking.check_store(tracking.tracking_uri())
    arrays = load_arrays(data)
    limit = params.train_limit or len(arrays["train_images"])
    train_x = to_model_input(arrays["train_images"][:limit])
    train_y = torch.as_tensor(arrays["train_labels"][:limit]).long()
    test_x = to_model_input(arrays["test_images"])
    test_y = torch.as_tensor(arrays["test_labels"]).long()

    model = Judge(JudgeConfig(channels=params.channels, feature_dim=params.feature_dim)).to(device)
    start = time.perf_counter()
    if not world.is_main:  # other ranks train and leave outputs and logging to rank 0
        train_classifier(model=model, images=train_x, labels=train_y, epochs=params.epochs,
                         batch_size=params.batch_size, lr=params.lr, weight_decay=params.weight_decay,
                         shift=params.shift, device=device, seed=params.seed, precision=precision,
                         world=world)
        distributed.shutdown()
        return {}
    with tracking.start_run(stage="train_judge", params=asdict(params)):
        import mlflow

        tracking.tag_run(world_size=str(world.size), precision=precision)
        progress = Progress("train_judge", total=params.epochs * (len(train_x) // params.batch_size),
                            per_step=params.batch_size)

        steps = train_classifier(
            model=model, images=train_x, labels=train_y, epochs=params.epochs,
            batch_size=params.batch_size, lr=params.lr, weight_decay=params.weight_decay,
            shift=params.shift, device=device, seed=params.seed, precision=precision,
            log_every=params.log_every,
            on_log=tracking.metric_logger("train_loss", progress), world=world)
        seconds = time.perf_counter() - start
        test_acc = accuracy(model, test_x, test_y, device)
        progress.done(steps, test_accuracy=test_acc)
        result = {"test_accuracy": test_acc, "train_seconds": round(seconds, 1),
                  "train_images_per_s": round(steps * params.batch_size / seconds, 1),
                  "threads": threads, "precision": precision}
        save_checkpoint(model_path, kind="judge", models={"model": model.cpu()},
                        config=config_dict(model), extra={"params": asdict(params)})
        write_json(metrics_path, {"test_accuracy": round(test_acc, 5)})
        tracking.log_mnist_input(data)
        mlflow.log_metrics({"test_accuracy": test_acc, "train_seconds": seconds})
        tracking.log_model(model.eval(), name="judge", example=test_x[:4].numpy())
    distributed.shutdown()
    return result


def main(argv=None):
    args = parse_args(__doc__, ["data", "model", "metrics"], argv)
    params = load_section(args.params, "train_judge", JudgeParams)
    result = train_judge(params=params, data=Path(args.data), model_path=Path(args.model),
                         metrics_path=Path(args.metrics))
    if not result:  # not rank 0
        return
    print(f"train_judge: test accuracy {result['test_accuracy']:.4f} in {result['train_seconds']} s "
          f"({result['train_images_per_s']} images/s, {result['threads']} threads, "
          f"{result['precision']})")


if __name__ == "__main__":
    sys.exit(run("train_judge", main))
