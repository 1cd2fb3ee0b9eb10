"""Stage check_params: every section of params.yaml, validated before any other stage runs.

DVC removes a stage's outputs just before it runs that stage (what lets its run cache
restore them later). Every stage depends on this one, so a typo or a bad value anywhere in
params.yaml stops `dvc repro` / `dvc exp run` here, with the key named, while all earlier
outputs are still in place.

It also removes train_gan's resume file when it holds a stopped training of other params:
when params come back to values DVC's run cache has, train_gan never runs to clear it.

Usage: python -m stages.check_params --out .checked/params.txt --resume .resume/train_gan.pt
"""
from __future__ import annotations

import sys
from pathlib import Path

from mnistgen.gan import remove_stale_resume
from mnistgen.runtime import atomic_write_bytes
from mnistgen.sections import check_all
from mnistgen.stage import parse_args, run
from mnistgen.tracking.settings import TrackingParams


def main(argv=None):
    args = parse_args(__doc__, ["out", "resume"], argv)
    sections = check_all(args.params, recording={"tracking": TrackingParams})
    if remove_stale_resume(Path(args.resume), sections["train_gan"]):
        print(f"check_params: removed {args.resume}: a stopped training of other train_gan params")
    # the same bytes whatever the values, so a valid edit reruns only the stages it affects
    atomic_write_bytes(Path(args.out), f"valid sections: {', '.join(sections)}\n".encode())
    print(f"check_params: {args.params}: {len(sections)} sections valid")


if __name__ == "__main__":
    sys.exit(run("check_params", main, dvc_removes_outputs=False))  # its output is `persist`
