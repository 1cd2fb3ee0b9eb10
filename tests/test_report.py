import json
import subprocess
from pathlib import Path

import pytest

from mnistgen.report import CAL_END, CAL_START, END, START, render

ROOT = Path(__file__).resolve().parents[1]


def committed(path: str) -> str:
    """The file as the last commit holds it: a user's own `dvc repro` rewrites metrics/ in the
    working tree with their machine's numbers, which must not turn this test red."""
    result = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"not a git checkout with {path} committed: {result.stderr.strip()}")
    return result.stdout


@pytest.mark.parametrize("path, markers", [("README.md", (START, END)),
                                           ("docs/evaluation.md", (CAL_START, CAL_END))])
def test_tables_are_the_ones_generated_from_the_committed_metrics(path, markers):
    text = committed(path)
    assert all(marker in text for marker in markers), f"{path} lost its generated table"
    expected = render(text, summary=json.loads(committed("metrics/evaluate.json")),
                      judge=json.loads(committed("metrics/judge.json")),
                      calibration=json.loads(committed("metrics/calibration.json")))
    assert expected == text, "run `make readme` after `dvc repro`, and commit it all"


def test_table_has_a_row_per_generator_and_the_floor():
    row = {"accuracy": 0.5, "frechet": 20.0, "precision": 0.5, "recall": 0.25, "nearest_train": 3.0,
           "diversity": 3.0, "cas": 0.9}
    summary = {"floor_frechet": 2.0, "rows": {"real_test": {**row, "frechet": 2.0, "nearest_train": 2.0},
                                              "gan": row}}
    out = render(f"intro\n{START}\nstale\n{END}\noutro\n", summary=summary, judge={"test_accuracy": 0.994})
    assert "stale" not in out and out.startswith("intro\n") and out.endswith("outro\n")
    assert "| conditional GAN | 50.00% | 20.00 (10.0x) | 0.500 | 0.250 | 3.00 (1.50x) | 3.00 | 90.00% |" in out
    assert "99.40%" in out



def test_calibration_table_has_a_row_per_change_with_its_ratio_to_the_floor():
    row = {"kind": "harmless", "accuracy": 0.99, "frechet": 3.0, "precision": 0.8, "recall": 0.7}
    out = render(f"{START}\n{END}\n{CAL_START}\nstale\n{CAL_END}\n",
                 summary={"floor_frechet": 1.0, "rows": {}}, judge={"test_accuracy": 0.99},
                 calibration={"floor_frechet": 1.5, "rows": {"blur sigma 0.5": row}})
    assert "stale" not in out
    assert "| blur sigma 0.5 | harmless | 99.00% | 3.00 (2.0x) | 0.800 | 0.700 |" in out


def test_readme_draws_the_pipeline_that_dvc_yaml_defines():
    """The README's diagram is `dvc dag --md` of the current dvc.yaml, not a drawing by hand."""
    import sys

    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run([str(dvc), "dag", "--md"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in (ROOT / "README.md").read_text(), \
        "paste the output of `dvc dag --md` into the README's pipeline section"
