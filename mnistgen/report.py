"""Write the results tables from metrics/*.json (never typed by hand): the README's, and
the calibration table of docs/evaluation.md.

Usage: python -m mnistgen.report README.md docs/evaluation.md   (or `make readme`)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

START, END = "<!-- metrics-table:start -->", "<!-- metrics-table:end -->"
CAL_START, CAL_END = "<!-- calibration-table:start -->", "<!-- calibration-table:end -->"
LABELS = {"real_test": "real test digits (reference)", "inverted_softmax": "seed: inverted softmax",
          "inverted_sigmoid": "variant: inverted sigmoid", "gan": "conditional GAN"}


def table(summary: dict, judge: dict) -> str:
    floor = summary["floor_frechet"]
    nearest_real = summary["rows"].get("real_test", {}).get("nearest_train")
    lines = ["| generator | judge accuracy | Fréchet distance (x floor) | precision | recall "
             "| nearest training digit (x real) | diversity | CAS |", "|---|---|---|---|---|---|---|---|"]
    order = lambda name: (name != "real_test", name != "inverted_softmax", name == "gan", name)  # noqa: E731
    for name in sorted(summary["rows"], key=order):
        row = summary["rows"][name]
        ratio = row["frechet"] / floor if floor else float("inf")
        lines.append(f"| {LABELS.get(name, name)} | {row['accuracy']:.2%} | {row['frechet']:.2f} "
                     f"({ratio:.1f}x) | {row['precision']:.3f} | {row['recall']:.3f} "
                     f"| {row['nearest_train']:.2f} ({row['nearest_train'] / nearest_real:.2f}x) "
                     f"| {row['diversity']:.2f} | {row['cas']:.2%} |")
    lines.append("")
    lines.append(f"Judge test accuracy {judge['test_accuracy']:.2%}. The real row's Fréchet "
                 f"distance ({floor:.2f}) is the real-vs-real floor: test vs training digits.")
    return "\n".join(lines)


def calibration_table(calibration: dict) -> str:
    floor = calibration["floor_frechet"]
    lines = ["| real test digits, changed | kind | judge accuracy | Fréchet distance (x floor) "
             "| precision | recall |", "|---|---|---|---|---|---|"]
    rows = sorted(calibration["rows"].items(), key=lambda item: (item[1]["kind"] != "harmless", item[0]))
    for name, row in rows:  # harmless changes first
        lines.append(f"| {name} | {row['kind']} | {row['accuracy']:.2%} | {row['frechet']:.2f} "
                     f"({row['frechet'] / floor:.1f}x) | {row['precision']:.3f} | {row['recall']:.3f} |")
    return "\n".join(lines)


def _replace(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render(text: str, *, summary: dict, judge: dict, calibration: dict | None = None) -> str:
    """The text with the tables it has rebuilt: the results table from evaluate.json
    (`summary`) and judge.json, the calibration table from calibration.json."""
    if START in text:
        text = _replace(text, START, END, table(summary, judge))
    if calibration is not None and CAL_START in text:
        text = _replace(text, CAL_START, CAL_END, calibration_table(calibration))
    return text


def main(argv=None) -> int:
    paths = [Path(p) for p in (argv or sys.argv[1:] or ["README.md", "docs/evaluation.md"])]
    read = lambda name: json.loads((Path("metrics") / name).read_text())  # noqa: E731
    for path in paths:
        path.write_text(render(path.read_text(), summary=read("evaluate.json"), judge=read("judge.json"),
                               calibration=read("calibration.json")))
        print(f"report: tables in {path} updated from metrics/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
