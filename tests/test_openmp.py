"""The OpenMP wait policy of stages and benchmarks is set before torch loads its OpenMP
runtime, which reads it once; a value the user set wins."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mnistgen.openmp import WAIT_POLICY

# in a fresh interpreter: the package's own import must come before torch's
PROBE = ("import sys, os, {package}; loaded = 'torch' in sys.modules; import {module}; "
         "print(os.environ.get('OMP_WAIT_POLICY'), loaded)")


def probe(package: str, module: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", PROBE.format(package=package, module=module)],
                          cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.split()


@pytest.mark.parametrize("package, module", [("stages", "stages.train_gan"),
                                             ("bench", "bench.benchmark")])
def test_the_policy_is_set_before_torch_loads(package, module):
    assert probe(package, module) == [WAIT_POLICY, "False"]


def test_a_policy_the_user_set_wins():
    assert probe("stages", "stages.train_judge", OMP_WAIT_POLICY="PASSIVE") == ["PASSIVE", "False"]
