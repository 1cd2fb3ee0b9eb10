"""What every stage script shares: the command line and turning known failures into one
clear line on stderr with a non-zero exit (never a traceback for bad input). It knows
nothing of MLflow: the recording layer raises its problems as ProjectErrors too."""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time

from mnistgen.errors import ProjectError
from mnistgen.runtime import Interrupted, terminate_as_interrupt

# a write that fails for these reasons is the machine's problem, not a bug: one line
FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def parse_args(doc: str, paths: list[str], argv=None):
    """--params plus one required option per path, declared once in dvc.yaml."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    for name in paths:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True)
    return parser.parse_args(argv)


def resources() -> tuple[float, float]:
    """(seconds since this process started, peak resident memory in MB)."""
    import psutil

    me = psutil.Process()
    try:
        import resource  # POSIX only: the true peak
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # Windows: psutil's peak working set
        peak_mb = getattr(me.memory_info(), "peak_wset", me.memory_info().rss) / 2 ** 20
    return time.time() - me.create_time(), peak_mb


def outputs_note(stage: str, dvc_removes_outputs: bool) -> str:
    """What became of the stage's earlier outputs: DVC removes a stage's (non-persist)
    outputs just before running it; run by hand, nothing was touched (writes are atomic)."""
    if dvc_removes_outputs and os.environ.get("DVC_STAGE", "").split(":")[-1] == stage:
        return f"`dvc checkout {stage}` restores its last good outputs from DVC's cache"
    return "earlier outputs are unchanged"


def run(stage: str, body, argv=None, dvc_removes_outputs: bool = True, command: bool = False) -> int:
    """Call body(argv); report our own errors (mnistgen.errors.ProjectError: bad params,
    data, checkpoints, training, the tracking store) as `<stage>: error: ...`, exit 1;
    Ctrl-C exits 130, SIGTERM 143. Each in one line that also says what became of the
    earlier outputs (a `command`, such as mnistgen.draw, has none to speak of). On success print the wall time and peak
    memory (the benchmark reads this line)."""
    note = "" if command else f" ({outputs_note(stage, dvc_removes_outputs)})"
    try:
        with terminate_as_interrupt():
            body(argv)
    except ProjectError as err:
        print(f"{stage}: error: {err}{note}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in FULL_OR_READ_ONLY:
            raise
        print(f"{stage}: error: cannot write {err.filename or 'an output'}: {err.strerror}; free "
              f"space (or make it writable) and rerun{note}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"{stage}: {err}{note}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt as err:
        how = str(err) or "interrupted"  # "terminated (SIGTERM)", or Ctrl-C
        print(f"{stage}: {how}; rerun to start again{note}", file=sys.stderr)
        return 128 + (signal.SIGTERM if str(err) else signal.SIGINT)
    wall, peak_mb = resources()
    print(f"{stage}: wall {wall:.1f} s, peak memory {peak_mb:.0f} MB")
    return 0
