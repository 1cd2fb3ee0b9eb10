"""What every stage script shares: the command line and turning known failures into one
clear line on stderr with a non-zero exit (never a traceback for bad input)."""
from __future__ import annotations

import argparse
import errno
import resource
import sys
import time

from mnistgen.data import DataError
from mnistgen.params import ParamsError
from mnistgen.runtime import CheckpointError
from mnistgen.tracking import TrackingError

KNOWN_ERRORS = (ParamsError, DataError, CheckpointError, TrackingError)


class TrainingError(RuntimeError):
    """Training went wrong in a way a param or a rerun can fix (a NaN loss, say)."""


class Interrupted(Exception):
    """The user pressed Ctrl-C; the message says where the work stopped."""


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
    return time.time() - me.create_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(stage: str, body, argv=None) -> int:
    """Call body(argv); report our own errors as `<stage>: error: ...`, exit 1.
    On success print the wall time and peak memory (the benchmark reads this line)."""
    try:
        body(argv)
    except (*KNOWN_ERRORS, TrainingError) as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in FULL_OR_READ_ONLY:
            raise
        print(f"{stage}: error: cannot write {err.filename or 'an output'}: {err.strerror}; free "
              f"space (or make it writable) and rerun; earlier outputs are unchanged", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"{stage}: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{stage}: interrupted; earlier outputs are unchanged, rerun to start again",
              file=sys.stderr)
        return 130
    wall, peak_mb = resources()
    print(f"{stage}: wall {wall:.1f} s, peak memory {peak_mb:.0f} MB")
    return 0
