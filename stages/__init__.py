"""The pipeline's stages, one module each, run by dvc.yaml as `python -m stages.<name>`."""
from mnistgen import openmp

openmp.apply()  # before any stage module imports torch
