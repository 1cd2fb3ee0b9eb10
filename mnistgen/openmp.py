"""OpenMP's wait policy for the pipeline's processes. torch's OpenMP runtime reads
OMP_WAIT_POLICY once, when it loads (at `import torch`), so this runs first: from the
package `__init__` of stages/ and bench/, before any of their modules imports torch.

ACTIVE: between ops, idle worker threads spin instead of sleeping, and our models' ops are
small and many. Measured on the AVX2 path, 2 cores, 2 threads, three separate processes per
policy (docs/speed.md): the judge's update 3,815-3,950 images/s under ACTIVE, 3,032-3,302
under the default, 2,286-3,235 under PASSIVE; the GAN step within the noise of all three.
Two trainings sharing the cores (`dvc queue start -j 2`) crawl under the default and ACTIVE
alike (judge 690-950 images/s each); PASSIVE keeps each at ~2,000: set
OMP_WAIT_POLICY=PASSIVE for those (README, docs/speed.md). A value already set wins.
"""
from __future__ import annotations

import os

WAIT_POLICY = "ACTIVE"


def apply() -> None:
    """Set OMP_WAIT_POLICY unless the environment already has it; before `import torch`."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
