"""Stage download: MNIST -> data/mnist.npz (uint8, sha256-verified whatever the source).

Usage: python -m stages.download --out data/mnist.npz
"""
from __future__ import annotations

import sys
from pathlib import Path

from mnistgen.data import DownloadParams, download
from mnistgen.params import load_section
from mnistgen.stage import parse_args, run


def main(argv=None):
    args = parse_args(__doc__, ["out"], argv)
    params = load_section(args.params, "download", DownloadParams)
    source = download(sources=params.sources, out=Path(args.out))
    print(f"download: MNIST from {source} -> {args.out} (sha256 verified)")


if __name__ == "__main__":
    sys.exit(run("download", main))
