"""Seeds, devices, threads, Ctrl-C, atomic writes and checkpoints."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch

from mnistgen.devices import pick_device
from mnistgen.errors import ProjectError

CHECKPOINT_FORMAT = 1


class CheckpointError(ProjectError, RuntimeError):
    """A checkpoint is missing, corrupt, truncated or of the wrong kind."""


class TrainingError(ProjectError, RuntimeError):
    """Training went wrong in a way a param or a rerun can fix (a NaN loss, say)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped the work; the message says where. `signum` tells which."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


def prepare(params) -> tuple[torch.device, int]:
    """Seed, threads and device from a section's `seed`, `threads` and `device` keys:
    (device, intra-op thread count)."""
    set_seed(params.seed)
    threads = set_threads(params.threads)
    return pick_device(params.device), threads


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # what torch.use_deterministic_algorithms(True, warn_only=True) does for eager code; the
    # public call also imports Inductor's config to make compiled code deterministic, 1.5 s
    # of every stage's start, and nothing here is compiled
    deterministic = getattr(torch._C, "_set_deterministic_algorithms", None)
    if deterministic is None:  # another torch: the public way
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        deterministic(True, warn_only=True)


def set_threads(threads: int) -> int:
    """0 = one intra-op thread per core. Returns the count in use."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


class CtrlC:
    """The first Ctrl-C or SIGTERM (what `timeout`, a CI cancel and `kill` send) asks a loop
    to stop after the step it is in (`requested`, `signum`), so what it saves holds whole
    steps; a second one stops at once. Only in a single process's main thread: under
    torchrun, ranks must not stop apart."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, active: bool = True):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested, self.signum = False, None

    def __enter__(self):
        if self.active:
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc):
        if self.active:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does, instead of killing
    the process on the spot: the stage says so in one line and its run ends KILLED (a
    training loop under CtrlC finishes its step and saves its resume file first)."""
    def handle(signum, frame):
        raise KeyboardInterrupt("terminated (SIGTERM)")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def inference_batch(device: torch.device) -> int:
    """Images per forward pass when a model only scores or draws (eval mode, no gradients).
    On a CPU, 128: the activations of a 28x28 layer (16+ floats per pixel) then stay in
    cache, and the judge scored 3x and G drew 2.5x the images per second of a batch of
    1,000, on AVX2 and AVX-512 kernels alike (docs/speed.md). The bytes do not depend on it:
    in eval mode every image goes through on its own. On a GPU, 1,024 (not measured)."""
    return 128 if torch.device(device).type == "cpu" else 1024


def fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """Channels-last conv weights: oneDNN's fast path on CPU (measured here: 1.4x for the
    GAN step, 2x for the judge), and the tensor-core layout on CUDA. Same values."""
    return model.to(memory_format=torch.channels_last)


# What `precision: auto` picks on a CPU, by the CPU's kind and by the model that trains: the
# faster of fp32 and bf16 in training images/s, measured per kind (docs/speed.md, "Precision
# per CPU kind"). The GAN's step gains from bf16 units; the judge's (small convs, pooling,
# BatchNorm) runs slower in bf16 on both kinds that have them. A table, not a timing at run
# time, so reruns on one kind of CPU give identical bytes.
AUTO_PRECISION_ON_CPU = {
    "amx": {"gan": "bf16", "judge": "fp32"},
    "avx512_bf16": {"gan": "bf16", "judge": "fp32"},
    "fp32": {"gan": "fp32", "judge": "fp32"},
}


def cpu_kind() -> str:
    """'amx' (Intel with AMX tiles), 'avx512_bf16' (bf16 dot products in AVX-512, e.g. AMD
    Zen 4) or 'fp32' (every other CPU, e.g. AVX2-only laptops, and any CPU whose oneDNN is held
    below those instructions by ONEDNN_MAX_CPU_ISA, as on the laptop path)."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    amx_allowed = limit == "ALL" or "AMX" in limit
    bf16_allowed = amx_allowed or "BF16" in limit or "AVX10" in limit
    if amx_allowed and _cpu_has("_is_amx_tile_supported"):
        return "amx"
    if bf16_allowed and _cpu_has("_is_avx512_bf16_supported"):
        return "avx512_bf16"
    return "fp32"


def _cpu_has(probe: str) -> bool:
    check = getattr(torch.cpu, probe, None)  # private, hence the guard
    return bool(check and check())


def resolve_precision(name: str, device: torch.device, *, model: str) -> str:
    """'auto' -> bf16 or fp32 for `model` ('gan' or 'judge'): on a CPU by its kind's row of
    AUTO_PRECISION_ON_CPU; on CUDA bf16 where the card has bf16 units (Ampere or newer); fp32
    on Apple's MPS (not measured there). Never depends on a timing, so reruns on one kind of
    machine give identical bytes. An explicit fp32 or bf16 always wins."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if device.type == "mps":
        return "fp32"
    return AUTO_PRECISION_ON_CPU[cpu_kind()][model]


def autocast(device: torch.device, precision: str):
    """Mixed precision for forward passes: matmuls/convs in bf16, weights, optimizer state,
    reductions and losses in fp32. No gradient scaling needed (bf16 has fp32's range)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_cuda(device: torch.device) -> None:
    """On CUDA, TF32 matmuls: ~fp32 quality for GAN/CNN training, several times faster."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half-written temp file stays behind
        tmp.unlink(missing_ok=True)
        raise


def write_npz(path: Path, **arrays) -> None:
    """np.savez, written atomically (numpy's zip entries carry a fixed date: same bytes)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(Path(path), buffer.getvalue())


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())


def read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV that write_csv wrote: one {column: text} per row."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_checkpoint(path: Path, *, kind: str, models: dict, config: dict, extra: dict | None = None):
    """Write {kind, config, state dicts, extra} to a temporary file, then rename.

    Only tensors and plain python values go in, so it loads with weights_only=True.
    """
    payload = {"format": CHECKPOINT_FORMAT, "kind": kind, "config": config,
               "state": {name: m.state_dict() for name, m in models.items()}, **(extra or {})}
    buffer = io.BytesIO()  # to a buffer: the archive's inner name then never depends on the
    torch.save(payload, buffer)  # file name, so identical training gives identical bytes
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: Path, kind: str) -> dict:
    """Load with weights_only=True (no code runs); any damage becomes a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; `dvc checkout {path}` restores it if "
                              f"DVC has it cached, else `dvc repro` retrains it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError,
            pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({err}); `dvc checkout "
                              f"--force {path}` restores the cached version, `dvc repro -s -f <stage>` "
                              f"retrains that stage alone") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of format {CHECKPOINT_FORMAT}")
    if payload.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a '{payload.get('kind')}' model, expected '{kind}'")
    return payload


def staging_dir(final: Path) -> Path:
    """An empty sibling folder to write a directory output into before `replace_dir`."""
    staging = Path(final).with_name(f".{Path(final).name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def replace_dir(staging: Path, final: Path) -> None:
    """Swap a finished staging folder into place (the old one is removed only afterwards)."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def staged(final: Path):
    """A staging folder for a directory output: swapped into place when the block succeeds,
    removed when it fails (a full disk, a bad checkpoint, Ctrl-C), so nothing is left behind."""
    staging = staging_dir(final)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, final)
