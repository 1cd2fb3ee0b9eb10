"""Write the README's results table from metrics/*.json (never typed by hand).

Usage: python -m mnistgen.report README.md   (or `make readme`)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

START, END = "<!-- metrics-table:start -->", "<!-- metrics-table:end -->"
LABELS = {"real_test": "real test digits (reference)", "inverted_softmax": "seed: inverted softmax",
          "inverted_sigmoid": "variant: inverted sigmoid", "gan": "conditional GAN"}


def table(summary: dict, judge: dict) -> str:
    floor = summary["floor_frechet"]
    lines = ["| generator | judge accuracy | Fréchet distance (x floor) | precision | recall "
             "| diversity | CAS |", "|---|---|---|---|---|---|---|"]
    order = lambda name: (name != "real_test", name != "inverted_softmax", name == "gan", name)  # noqa: E731
    for name in sorted(summary["rows"], key=order):
        row = summary["rows"][name]
        ratio = row["frechet"] / floor if floor else float("inf")
        lines.append(f"| {LABELS.get(name, name)} | {row['accuracy']:.2%} | {row['frechet']:.2f} "
                     f"({ratio:.1f}x) | {row['precision']:.3f} | {row['recall']:.3f} "
                     f"| {row['diversity']:.2f} | {row['cas']:.2%} |")
    lines.append("")
    lines.append(f"Judge test accuracy {judge['test_accuracy']:.2%}. The real row's Fréchet "
                 f"distance ({floor:.2f}) is the real-vs-real floor: test vs training digits.")
    return "\n".join(lines)


def render(readme: str, *, summary: dict, judge: dict) -> str:
    """The README text with its table rebuilt from evaluate.json (`summary`) and judge.json."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(summary, judge)}\n{END}{tail}"


def main(argv=None) -> int:
    path = Path((argv or sys.argv[1:] or ["README.md"])[0])
    metrics = path.parent / "metrics"
    path.write_text(render(path.read_text(), summary=json.loads((metrics / "evaluate.json").read_text()),
                           judge=json.loads((metrics / "judge.json").read_text())))
    print(f"report: table in {path} updated from metrics/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
