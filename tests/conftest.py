"""Shared fixtures: a shrunken copy of the project in a temporary git + DVC repository.

`built_pipeline` runs the shrunken pipeline once per test session (once in all, when
pytest-xdist runs tests in several processes) and is only read by the tests that get it;
a test that changes a repository takes `pipeline_copy`, a copy of its own.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the store this repository's own `make repro` used; read now, since mlflow.set_tracking_uri
# in a test changes the variable for the rest of the session
REPO_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"

# Small enough to run every stage in seconds, big enough to exercise every code path. One
# thread each: tests run two at a time on two cores, and these models are too small to split.
SHRUNK = {
    "train_judge": {"epochs": 1, "train_limit": 2000, "batch_size": 100, "log_every": 5,
                    "channels": [8, 16], "feature_dim": 32, "threads": 1},
    "train_inverted": {"steps": 30, "log_every": 5, "grid_every": 10},
    "train_gan": {"epochs": 2, "train_limit": 1000, "batch_size": 100, "g_hidden": [16, 8, 4],
                  "d_hidden": [8, 16, 32], "latent_dim": 16, "log_every": 4, "sample_every": 10,
                  "eval_every": 10, "eval_samples": 100, "checkpoint_every": 4, "threads": 1,
                  "ema_bn_samples": 256},
    "sample": {"per_class": 20, "threads": 1},
    "evaluate": {"per_class": 10, "cas_epochs": 1, "cas_batch_size": 50, "cas_channels": [8],
                 "threads": 1},
    "tracking": {"system_metrics_every": 1, "outage_wait": 30},  # short runs: sample often
}


def repo_section(section: str) -> dict:
    """One section of the repository's params.yaml, as a plain dict."""
    with open(ROOT / "params.yaml") as f:
        return dict(yaml.safe_load(f)[section])


def make_params(section: str, **overrides):
    """The validated params object of params.yaml's `section`, with some keys changed."""
    from mnistgen.params import parse_section
    from mnistgen.sections import SCHEMAS

    return parse_section({**repo_section(section), **overrides}, SCHEMAS[section], section)


def shrunk_params() -> dict:
    with open(ROOT / "params.yaml") as f:
        params = yaml.safe_load(f)
    for section, values in SHRUNK.items():
        params[section].update(values)
    return params


def write_params(repo: Path, params: dict) -> None:
    with open(repo / "params.yaml", "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)


def env_for(repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml = this venv's
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    # two processes share 2 cores when tests run in parallel: threads that wait sleep
    # instead of spinning (../shared/NOTES.md: 1.70 s -> 0.065 s a GAN step)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def sh(repo: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=repo, env={**env_for(repo), **(env or {})}, capture_output=True,
                            text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def dvc(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return sh(repo, str(BIN / "dvc"), *args, check=check, env=env)


def make_repo(path: Path, params: dict) -> Path:
    """Copy the project's code and dvc.yaml into a fresh git + DVC repository."""
    path.mkdir(parents=True, exist_ok=True)
    for item in ("mnistgen", "stages", "dvc.yaml", ".gitignore"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, path / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, path / item)
    write_params(path, params)
    sh(path, "git", "init", "-q")
    dvc(path, "init", "-q")
    dvc(path, "config", "core.analytics", "false")
    sh(path, "git", "add", "-A")
    sh(path, "git", "commit", "-qm", "init")
    return path


def shared_dir(tmp_path_factory) -> Path:
    """A folder all pytest-xdist workers of this session share (the session's own folder
    when tests run in one process)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def built_pipeline(tmp_path_factory) -> Path:
    """A shrunken project after one full `dvc repro` (download included), its results
    committed and pushed to a local DVC remote (`remote/` beside it). Read it only."""
    from filelock import FileLock

    home = shared_dir(tmp_path_factory) / "built"
    home.mkdir(exist_ok=True)
    with FileLock(str(home) + ".lock"):
        if not (home / "done").exists():
            repo = make_repo(home / "repo", shrunk_params())
            result = dvc(repo, "repro")
            (home / "first_repro.log").write_text(result.stdout + result.stderr)
            shutil.copy(repo / "dvc.lock", home / "first_dvc.lock")  # run A of the run-cache test
            dvc(repo, "remote", "add", "-d", "local", str(home / "remote"))
            dvc(repo, "push", "-q")
            sh(repo, "git", "add", "-A")
            sh(repo, "git", "commit", "-qm", "results")
            (home / "done").write_text("ok")
    return home / "repo"


def copy_repo(source: Path, target: Path) -> Path:
    """A copy of a test repository (git, DVC cache, outputs, MLflow store): the first run in
    it points mlflow.db's artifact folders at the copy's own mlruns/."""
    shutil.copytree(source, target, symlinks=True)
    return target


@pytest.fixture
def pipeline_copy(built_pipeline, tmp_path) -> Path:
    """A private copy of the built pipeline, for a test that changes it."""
    return copy_repo(built_pipeline, tmp_path / "repo")


def first_repro_log(repo: Path) -> str:
    return (repo.parent / "first_repro.log").read_text()


def stage_runs(client, stage: str, filter_string: str = "") -> list:
    """The MLflow runs of one stage (all stages log to the one `draw-mnist` experiment)."""
    from mnistgen.tracking.names import EXPERIMENT

    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    where = f"tags.dvc_stage = '{stage}'" + (f" and {filter_string}" if filter_string else "")
    return client.search_runs([exp_id], filter_string=where)


def store_client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")




# `make test` runs two pytest-xdist workers (`-n 2`), one per core, and gives each one of two
# queues of modules, their tests in file order: "pipeline" first builds the shared pipeline
# and then runs the modules that read or copy it; "others" runs the quick tests while that
# build runs, then the modules that wait for it. The two take about equally long: the
# tests named in TO_OTHERS run in "others" although their module is in "pipeline" (measured
# with --durations=0, 2026-12-07: pipeline 440 s of test time, others 354 s; the sweep 45 s).
# A test renamed out of TO_OTHERS only goes back to its module's queue.
# (pytest-xdist's own `--dist loadgroup` does not group under pytest 9.2:
# pytest-dev/pytest-xdist#1386.)
PIPELINE_QUEUE = {"test_pipeline", "test_stage_runs", "test_reruns"}
TO_OTHERS = {"test_sweep_reproduces_the_pipelines_gan_and_names_a_broken_variant"}


def queue_of(nodeid: str) -> str:
    """'pipeline' or 'others': the xdist worker a test runs on."""
    path, _, name = nodeid.partition("::")
    module = path.rsplit("/", 1)[-1].removesuffix(".py")
    return "pipeline" if module in PIPELINE_QUEUE and name.split("[")[0] not in TO_OTHERS else "others"


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class TwoQueues(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return queue_of(nodeid)

    return TwoQueues(config, log)


def pytest_collection_modifyitems(items):
    """The quick tests first, then the slow modules (which wait for the built pipeline):
    the "others" queue then has work while the "pipeline" queue builds it."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
