"""Benchmarks and sweeps (`python -m bench.<name>`); they time what the stages run."""
from mnistgen import openmp

openmp.apply()  # the stages' OpenMP wait policy, before any bench module imports torch
