"""`dvc plots show` / `dvc plots diff` as one HTML file that needs no internet.

DVC's own page loads Vega from a CDN, so offline its curves are blank. This asks DVC for
the same plots as JSON (Vega-Lite specs with their data, and the image plots), draws each
curve to SVG with vl-convert (Vega bundled in a wheel, no browser or network), and writes
one page with the SVGs and the digit grids inline (`make plots-offline`).

Usage: python tools/plots_offline.py [--out dvc_plots/offline.html] [REV ...]
       (no REV: the workspace, as `dvc plots show`; REVs: `dvc plots diff REV ...`,
       e.g. two experiment names from `dvc exp show`)
"""
from __future__ import annotations

import argparse
import base64
import html
import importlib.util
import json
import subprocess
import sys
from pathlib import Path


def dvc_plots(revisions: list[str]) -> dict:
    cmd = ["dvc", "plots", "diff", *revisions, "--json"] if revisions else ["dvc", "plots", "show", "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"plots-offline: {' '.join(cmd)} failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)["data"]


def section(title: str, plots: list[dict]) -> str:
    import vl_convert as vlc

    parts = [f"<h2>{html.escape(title)}</h2>"]
    for plot in plots:
        if plot["type"] == "vega":
            parts.append(vlc.vegalite_to_svg(plot["content"]))
        elif plot["type"] == "image":
            data = base64.b64encode(Path(plot["url"]).read_bytes()).decode()
            label = html.escape(", ".join(plot.get("revisions", [])))
            parts.append(f'<figure><img src="data:image/png;base64,{data}"><figcaption>{label}'
                         f"</figcaption></figure>")
    return "\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="*")
    parser.add_argument("--out", type=Path, default=Path("dvc_plots/offline.html"))
    args = parser.parse_args(argv)
    if importlib.util.find_spec("vl_convert") is None:
        raise SystemExit("plots-offline: needs vl-convert-python (`make plots-offline` installs it)")
    plots = dvc_plots(args.revisions)
    body = "\n".join(section(title, items) for title, items in plots.items())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><title>DVC plots</title>"
                        "<style>body{font-family:sans-serif}figure{display:inline-block}</style>"
                        f"</head><body>{body}</body></html>\n")
    print(f"plots-offline: {len(plots)} plots -> {args.out} (no scripts, no network)")


if __name__ == "__main__":
    sys.exit(main())
