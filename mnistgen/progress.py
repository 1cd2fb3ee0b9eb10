"""Progress lines for long work, so a user can tell a working run from a hung one.

    progress = Progress("train_gan", total=1404, unit="images", per_step=128)
    for step in ...:
        ...
        progress.update(step, loss_d=0.9, loss_g=1.2)   # prints at most every `every` seconds
    progress.done()                                     # always prints the last line

One plain line each time, flushed (it shows under `dvc repro`, in `dvc queue logs` and in a
file), e.g. `train_gan: step 500/1404 (36%), 1,250 images/s, 0:51 elapsed, 1:32 left,
loss_d 0.912, loss_g 1.204`. The clock decides only *when* a line is printed, never what is
computed, so outputs stay identical from run to run.
"""
from __future__ import annotations

import os
import sys
import time

# seconds between lines; MNISTGEN_PROGRESS_SECONDS changes it (the tests use a short one)
EVERY = float(os.environ.get("MNISTGEN_PROGRESS_SECONDS", "10"))
# the first line comes sooner: it says how long the whole run will take (`epochs: 10000`
# shows "781:00:00 left" within seconds, not after the first interval)
FIRST = 3.0


def clock(seconds: float) -> str:
    """62.4 -> '1:02'; 3725 -> '1:02:05'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    def __init__(self, label: str, *, total: int, unit: str = "images", per_step: int = 1,
                 every: float | None = None, stream=None, timer=time.monotonic,
                 start_step: int = 0):
        """start_step: the step the work starts from (a resumed run's), so its rate counts
        only its own steps, however often update() is called."""
        self.label, self.total, self.unit, self.per_step = label, max(total, 1), unit, per_step
        self.every = EVERY if every is None else every
        self.stream, self.timer = stream, timer
        self.start = self.timer()
        self.start_step = start_step
        self.last_print, self.printed = self.start, False
        self.step, self.values = start_step, {}

    def update(self, step: int, **values: float) -> None:
        self.step = step
        self.values.update(values)
        due = self.every if self.printed else min(self.every, FIRST)
        if self.timer() - self.last_print >= due:
            self.print()

    def done(self, step: int | None = None, **values: float) -> None:
        if step is not None:
            self.step = step
        self.values.update(values)
        self.print()

    def line(self) -> str:
        elapsed = self.timer() - self.start
        done_steps = self.step - self.start_step
        rate = done_steps * self.per_step / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.step) * self.per_step / rate if rate > 0 else 0.0
        parts = [f"{self.label}: step {self.step}/{self.total} ({100 * self.step / self.total:.0f}%)",
                 f"{rate:,.0f} {self.unit}/s", f"{clock(elapsed)} elapsed", f"{clock(left)} left"]
        parts += [f"{name} {value:.4g}" for name, value in self.values.items()]
        return ", ".join(parts)

    def print(self) -> None:
        print(self.line(), file=self.stream or sys.stdout, flush=True)
        self.last_print, self.printed = self.timer(), True
