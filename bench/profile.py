"""Where a training step's time goes: torch.profiler's top ops of the GAN's and the judge's
steps on the default params, each op's share of the step, and which oneDNN primitive ran
each convolution (jit:avx2, jit:avx512, gemm, ref), from ONEDNN_VERBOSE in a child process.

Usage: python -m bench.profile [--steps 20] [--top 15] [--what gan judge]
Run it on the laptop path as `make bench-laptop` does (ONEDNN_MAX_CPU_ISA=AVX2 ...) to see
that path's kernels.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def step_functions(what: str):
    """(setup-free one_step(), images per step) of the default params' training step."""
    from bench.benchmark import gan_stepper, judge_stepper
    from mnistgen.classifier import JudgeParams
    from mnistgen.data import load_arrays
    from mnistgen.gan import GanParams
    from mnistgen.images import to_model_input
    from mnistgen.params import load_section
    from mnistgen.runtime import set_threads

    arrays = load_arrays(ROOT / "data/mnist.npz")
    images = to_model_input(arrays["train_images"])
    labels = torch.as_tensor(arrays["train_labels"]).long()
    if what == "gan":
        p = load_section(ROOT / "params.yaml", "train_gan", GanParams)
        set_threads(p.threads)
        _, one_step = gan_stepper(p, images, labels)
        return one_step, p.batch_size
    p = load_section(ROOT / "params.yaml", "train_judge", JudgeParams)
    set_threads(p.threads)
    _, one_step = judge_stepper(p, images, labels)
    return one_step, p.batch_size


def top_ops(what: str, steps: int, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    one_step, per_step = step_functions(what)
    for _ in range(3):  # warm-up: oneDNN builds its kernels on first use
        one_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            one_step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{what}: {steps} steps, {total / 1e3 / steps:.1f} ms of op time per step "
          f"({per_step} images); top ops by self time:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"  {e.key:<42} {e.self_cpu_time_total / 1e3 / steps:7.2f} ms/step "
              f"{e.self_cpu_time_total / total:6.1%}  x{e.count // steps}")


def primitives(what: str, steps: int) -> None:
    """Time per (primitive kind, implementation) over `steps` steps, from oneDNN's own log."""
    code = (f"import bench.profile as b; f, _ = b.step_functions({what!r});\n"
            f"[f() for _ in range(3)]\nimport os; os.environ['ONEDNN_VERBOSE'] = '1'\n"
            f"import torch; torch.backends.mkldnn.verbose(1)\n[f() for _ in range({steps})]")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "ONEDNN_VERBOSE": "1"}).stdout
    spent = collections.Counter()
    isa = ""
    for line in out.splitlines():
        parts = line.split(",")
        if line.startswith("onednn_verbose") and "info,cpu,isa:" in line:
            isa = line.split("isa:")[1]
        if len(parts) > 6 and parts[0] == "onednn_verbose" and "exec" in parts:
            at = parts.index("exec")
            kind, impl = parts[at + 2], parts[at + 3]
            try:
                spent[(kind, impl)] += float(parts[-1])
            except ValueError:
                pass
    total = sum(spent.values()) or 1.0
    print(f"{what}: oneDNN primitives ({isa or 'isa not reported'}), ms per step:")
    for (kind, impl), ms in spent.most_common(12):
        print(f"  {kind:<16} {impl:<28} {ms / steps:7.2f} ms  {ms / total:6.1%}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--what", nargs="+", default=["gan", "judge"], choices=["gan", "judge"])
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ATen level "
          f"{torch.backends.cpu.get_cpu_capability()}, ONEDNN_MAX_CPU_ISA="
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '(all)')}")
    for what in args.what:
        top_ops(what, args.steps, args.top)
        primitives(what, min(args.steps, 5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
