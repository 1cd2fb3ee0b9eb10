import json
from pathlib import Path

from mnistgen.report import END, START, render

ROOT = Path(__file__).resolve().parents[1]


def test_readme_table_is_the_one_generated_from_the_committed_metrics():
    readme = (ROOT / "README.md").read_text()
    assert render(readme, ROOT / "metrics") == readme, "run `make readme` after `dvc repro`"


def test_table_has_a_row_per_generator_and_the_floor(tmp_path):
    (tmp_path / "metrics").mkdir()
    row = {"accuracy": 0.5, "frechet": 20.0, "precision": 0.5, "recall": 0.25, "diversity": 3.0, "cas": 0.9}
    summary = {"floor_frechet": 2.0, "rows": {"real_test": {**row, "frechet": 2.0}, "gan": row}}
    (tmp_path / "metrics/evaluate.json").write_text(json.dumps(summary))
    (tmp_path / "metrics/judge.json").write_text(json.dumps({"test_accuracy": 0.994}))
    out = render(f"intro\n{START}\nstale\n{END}\noutro\n", tmp_path / "metrics")
    assert "stale" not in out and out.startswith("intro\n") and out.endswith("outro\n")
    assert "| conditional GAN | 50.00% | 20.00 (10.0x) | 0.500 | 0.250 | 3.00 | 90.00% |" in out
    assert "99.40%" in out
