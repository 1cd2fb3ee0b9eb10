"""Which device a section's `device` key names, and whether this machine has it."""
from __future__ import annotations

import torch

from mnistgen.errors import ParamsError


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else Apple's mps when present, else cpu; 'cpu', 'mps',
    'cuda' or 'cuda:1' force a device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamsError(f"device '{name}' requested but CUDA is not available on this machine; "
                          f"set device: auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ParamsError(f"device '{name}' requested but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s); set device: cuda or auto")
    if device.type == "mps" and not mps_available():
        raise ParamsError(f"device '{name}' requested but Apple's MPS is not available on this "
                          f"machine; set device: auto or cpu")
    return device


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
