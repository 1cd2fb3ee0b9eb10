"""Speed benchmark: matmul peak, the FLOPs of every stage of a default `dvc repro`,
training/sampling throughput and FLOP/s utilization, our in-memory loop vs. the conventional
torchvision Dataset + DataLoader loop, and (with --pipeline) the wall time and peak memory of
every stage of a default `dvc repro`, raw and scaled to a 100 GFLOP/s fp32 CPU.

Usage: python -m bench.benchmark [--repeats 7] [--pipeline]    (or `make bench`)
Prints medians over repeats and the spread (max/min - 1) as a noise figure.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.flops import count, gan_step_flops, report as flops_report, stage_flops
from mnistgen.classifier import JudgeParams, augment, classifier_loss
from mnistgen.data import load_arrays
from mnistgen.distributed import World
from mnistgen.gan import GanParams, GanState, d_loss_fn, g_loss_fn, generate, train_step
from mnistgen.images import to_model_input
from mnistgen.models import Discriminator, Generator, Judge
from mnistgen.params import load_section
from mnistgen.runtime import cpu_kind, fast_layout, resolve_precision, set_threads

ROOT = Path(__file__).resolve().parents[1]
LAPTOP_GFLOPS = 100  # fp32 matmul peak of an ordinary 2-core AVX2 laptop CPU: times are scaled to it


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:,.0f} (noise {max(values) / min(values) - 1:.0%})"


def matmul_peak(repeats: int, n: int = 2048, per_repeat: int = 5,
                dtype: torch.dtype = torch.float32) -> list[float]:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    times = timed(lambda: [a @ b for _ in range(per_repeat)], repeats)
    return [per_repeat * 2 * n ** 3 / t / 1e9 for t in times]


def gan_stepper(p: GanParams, images, labels):
    """(state, one_step()) where one_step is the training loop's own step: its batch order,
    learning-rate schedule and step count, so R1 runs on 1 step in r1_every as in a real run."""
    state = GanState(p, torch.device("cpu"))
    steps_per_epoch = len(images) // p.batch_size
    total, world = p.epochs * steps_per_epoch, World()

    def one_step():
        if state.step == total:  # a long benchmark starts the schedule over, never runs past it
            state.step = 0
        train_step(state, images=images, labels=labels, p=p, world=world, total=total,
                   steps_per_epoch=steps_per_epoch)
    return state, one_step


def gan_bench(p: GanParams, images, labels, steps: int, repeats: int):
    """images/s and FLOPs per image of our loop: indexing in-memory tensors."""
    state, one_step = gan_stepper(p, images, labels)
    flops = gan_step_flops(state, p, total=p.r1_every) / p.batch_size  # R1 on 1 step in r1_every
    times = timed(lambda: [one_step() for _ in range(steps)], repeats)
    return [steps * p.batch_size / t for t in times], flops, state


def write_idx(root: Path, arrays: dict) -> None:
    """The raw files torchvision's MNIST class reads, made from our verified arrays."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(x), 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(y)) + y.tobytes())


def conventional_gan_bench(p: GanParams, arrays: dict, steps: int, repeats: int) -> list[float]:
    """The well-known examples' loop on the same models (PyTorch's DCGAN example, made
    conditional): torchvision MNIST + ToTensor/Normalize + DataLoader with default settings,
    default memory layout, fp32, and D run separately on the real and the fake batch, then
    once more on the fake batch for G's update."""
    from torchvision import datasets, transforms

    with tempfile.TemporaryDirectory() as tmp:
        write_idx(Path(tmp), arrays)
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
        loader = torch.utils.data.DataLoader(datasets.MNIST(tmp, train=True, transform=tf),
                                             batch_size=p.batch_size, shuffle=True)
        cfg = p.model_config()
        G, D = Generator(cfg), Discriminator(cfg)
        opt_g = torch.optim.Adam(G.parameters(), lr=p.lr_g, betas=(p.beta1, p.beta2))
        opt_d = torch.optim.Adam(D.parameters(), lr=p.lr_d, betas=(p.beta1, p.beta2))
        batches = iter(loader)

        def one_step(real, y):
            D.zero_grad()
            fake = G(torch.randn(len(real), p.latent_dim), y)
            d_loss_fn(p.loss, D(real, y), D(fake.detach(), y)).backward()  # two D passes
            opt_d.step()
            G.zero_grad()
            g_loss_fn(p.loss, D(fake, y)).backward()
            opt_g.step()

        def some_steps():
            nonlocal batches
            for _ in range(steps):
                try:
                    real, y = next(batches)
                except StopIteration:
                    batches = iter(loader)
                    real, y = next(batches)
                one_step(real, y)

        return [steps * p.batch_size / t for t in timed(some_steps, repeats)]


def judge_stepper(p: JudgeParams, images, labels):
    """(precision, one_step()) where one_step is train_classifier's update on the default
    params: augmentation, the consistency term, AdamW."""
    model = fast_layout(Judge(p.model_config()))
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    gen = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    precision = resolve_precision(p.precision, cpu, model="judge")

    def one_step():
        idx = torch.randint(0, len(images), (p.batch_size,), generator=gen)
        x = augment(images[idx], shift=p.shift, smooth=p.smooth, noise=p.noise, gen=gen)
        loss = classifier_loss(model, x, labels[idx], consistency=p.consistency, noise=p.noise,
                               gen=gen, device=cpu, precision=precision)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return precision, one_step


def judge_bench(p: JudgeParams, images, labels, steps: int, repeats: int):
    precision, one_step = judge_stepper(p, images, labels)
    flops = count(one_step) / p.batch_size
    times = timed(lambda: [one_step() for _ in range(steps)], repeats)
    return [steps * p.batch_size / t for t in times], flops, precision


def pipeline_bench(peak_gflops: float) -> list[tuple[str, str]]:
    """Run `dvc repro --force` on the default params in a temporary copy of the project and
    collect each stage's own 'wall ... s, peak memory ... MB' line; each time also scaled to
    a CPU of LAPTOP_GFLOPS (time x measured peak / LAPTOP_GFLOPS)."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
            ".venv", "mlflow.db*", "models", "samples", ".resume", "__pycache__", ".dvc"))
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": tmp}
        for cmd in (["git", "init", "-q"], [str(bin_dir / "dvc"), "init", "-q", "-f"]):
            subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
        start = time.perf_counter()
        out = subprocess.run([str(bin_dir / "dvc"), "repro", "--force"], cwd=repo, env=env,
                             capture_output=True, text=True)
        total = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"pipeline failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        rows = re.findall(r"^(\w+): wall ([\d.]+) s, peak memory (\d+ MB)$", out.stdout, re.M)
        scale = peak_gflops / LAPTOP_GFLOPS

        def both(seconds: float) -> str:
            return f"{seconds:6.0f} s ({seconds * scale:5.0f} s at {LAPTOP_GFLOPS} GFLOP/s)"
        return [(name, f"{both(float(wall))}, peak {mem}") for name, wall, mem in rows] + [
            ("total (dvc repro --force)", both(total))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pipeline", action="store_true", help="also time a default dvc repro")
    args = parser.parse_args(argv)

    gan_p = load_section(ROOT / "params.yaml", "train_gan", GanParams)
    judge_p = load_section(ROOT / "params.yaml", "train_judge", JudgeParams)
    threads = set_threads(gan_p.threads)
    arrays = load_arrays(ROOT / "data/mnist.npz")
    images = to_model_input(arrays["train_images"])
    labels = torch.as_tensor(arrays["train_labels"]).long()
    print(f"threads {threads}, torch {torch.__version__}, {args.repeats} repeats")

    peak = matmul_peak(args.repeats)
    peak_med = statistics.median(peak)
    print(f"matmul fp32 2048^3 peak:         {summary(peak)} GFLOP/s   (the reference)")
    if cpu_kind() == "fp32":  # no bf16 units (or held below them): emulated, minutes per repeat
        print("matmul bf16 2048^3:              not measured (this CPU kind has no bf16 units)")
    else:
        print(f"matmul bf16 2048^3:              "
              f"{summary(matmul_peak(args.repeats, dtype=torch.bfloat16))} GFLOP/s")
    flops = stage_flops(ROOT / "params.yaml")
    print("FLOPs of a default dvc repro (torch.utils.flop_counter), and that work's time at the "
          "measured fp32 peak:")
    print(flops_report(flops))
    print(f"  = {sum(flops.values()) / 1e9 / peak_med:,.0f} s at {peak_med:,.0f} GFLOP/s, "
          f"{sum(flops.values()) / 1e9 / LAPTOP_GFLOPS:,.0f} s at {LAPTOP_GFLOPS} GFLOP/s (100% use)")

    def util(ips, flops):
        return f"{statistics.median(ips) * flops / 1e9 / peak_med:.0%} of fp32 peak"

    ours, gan_flops, state = gan_bench(gan_p, images, labels, args.steps, args.repeats)
    fp32, _, _ = gan_bench(dataclasses.replace(gan_p, precision="fp32"), images, labels,
                           args.steps, args.repeats)
    conv = conventional_gan_bench(gan_p, arrays, args.steps, args.repeats)
    print(f"train_gan ({gan_p.arch}, batch {gan_p.batch_size}): {gan_flops / 1e6:.1f} MFLOP per image")
    print(f"  our loop ({state.precision}):{'':<{17 - len(state.precision)}}"
          f"{summary(ours)} images/s = {util(ours, gan_flops)}")
    print(f"  our loop (fp32):               {summary(fp32)} images/s = {util(fp32, gan_flops)}")
    print(f"  conventional loop (DataLoader):{summary(conv)} images/s = {util(conv, gan_flops)}")
    print(f"  ratio ours / conventional:     {statistics.median(ours) / statistics.median(conv):.2f}x"
          f" (fp32 only: {statistics.median(fp32) / statistics.median(conv):.2f}x)")

    judge_ips, judge_flops, judge_prec = judge_bench(judge_p, images, labels, args.steps, args.repeats)
    print(f"train_judge (batch {judge_p.batch_size}, {judge_prec}): {summary(judge_ips)} images/s, "
          f"{judge_flops / 1e6:.1f} MFLOP/image = {util(judge_ips, judge_flops)}")

    G = copy.deepcopy(state.G_ema).eval()
    z = torch.randn(10000, gan_p.latent_dim)
    y = torch.arange(10000) % 10
    sample = [10000 / t for t in timed(lambda: generate(G, y, z), args.repeats)]
    print(f"sampling (GAN, 10k digits):      {summary(sample)} images/s")

    if args.pipeline:
        print("default pipeline, per stage (one run):")
        for name, value in pipeline_bench(peak_med):
            print(f"  {name:<26} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
