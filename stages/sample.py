"""Stage sample: draw from every generator (see mnistgen.sampling): a 10-row grid each, an
inverted-vs-GAN comparison figure, and `per_class` samples per digit for evaluation.

Usage: python -m stages.sample --inverted models/inverted --gan models/gan.pt \
           --samples samples --figures figures
"""
from __future__ import annotations

import sys
from pathlib import Path

from mnistgen.generators import load_all
from mnistgen.params import load_section
from mnistgen.runtime import prepare, staged
from mnistgen.sampling import SampleParams, write_samples
from mnistgen.stage import parse_args, run


def main(argv=None):
    args = parse_args(__doc__, ["inverted", "gan", "samples", "figures"], argv)
    params = load_section(args.params, "sample", SampleParams)
    device, _ = prepare(params)
    drawers = load_all(Path(args.inverted), Path(args.gan))
    for drawer in drawers:
        drawer.model.to(device)
    # both folders are swapped into place only when every file is written
    with staged(Path(args.samples)) as samples, staged(Path(args.figures)) as figures:
        names = write_samples(drawers, params=params, samples_dir=samples, figures_dir=figures)
    print(f"sample: {params.per_class} per digit from {', '.join(names)}")


if __name__ == "__main__":
    sys.exit(run("sample", main))
