"""OpenMP's wait policy for the pipeline's processes. torch's OpenMP runtime reads
OMP_WAIT_POLICY once, when it loads (at `import torch`), so this runs first: from the
package `__init__` of stages/ and bench/, before any of their modules imports torch.

ACTIVE: between ops, idle worker threads spin instead of sleeping, and our models' ops are
small and many: the judge's update ran 1.20-1.28x faster than under OpenMP's default on the
AVX2 path (the GAN step within noise). Two trainings sharing the cores (`dvc queue start -j
2`) crawl under the default and ACTIVE alike; set OMP_WAIT_POLICY=PASSIVE for those. A
value already set wins. Measurements: docs/speed.md, "fifth pass".
"""
from __future__ import annotations

import os

WAIT_POLICY = "ACTIVE"


def apply() -> None:
    """Set OMP_WAIT_POLICY unless the environment already has it; before `import torch`."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
