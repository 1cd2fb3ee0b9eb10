"""MLflow set-up shared by the stages: where the store is, a check before any work, tags.

The store defaults to `sqlite:///<repo root>/mlflow.db`, where the root is DVC_ROOT (set by
DVC, also for `dvc exp run --queue/--temp` runs in a temporary copy) or the working
directory. MLFLOW_TRACKING_URI overrides it.

Every run goes to one experiment, `draw-mnist`, marked as model training (so the UI opens
it on its runs table). Stages run by one `dvc repro` / `dvc exp run` are nested under one
parent run named after that invocation; see mnistgen.naming for run names.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from mnistgen import naming
from mnistgen.params import field
from mnistgen.runtime import Interrupted

EXPERIMENT = "draw-mnist"
# what the experiment is, for MLflow versions whose UI picks its GenAI pages (traces) or its
# runs table by this tag. MLflow 3.17's UI ignores it and follows its "GenAI | Model
# training" switch (a URL parameter, else the browser's last choice, else GenAI): ui_path.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_WORKFLOW = "workflowType=machine_learning"  # the switch on "Model training"
INVOCATION_TAG = "mnistgen.invocation"  # marks a parent run: which dvc process it stands for


@dataclasses.dataclass
class TrackingParams:
    """params.yaml's `tracking` section: what MLflow records; changes no output."""
    system_metrics: bool = field(doc="CPU, memory (and GPU) of training runs, as system/* metrics")
    system_metrics_every: int = field(lo=1, hi=3600, doc="seconds between system metric samples")


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialize store creation/migration and run creation between processes on one SQLite
    file: concurrent first use of a new store is what fails with 'database is locked'."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock  # an OS lock on POSIX and Windows alike

    with FileLock(db.with_name(db.name + ".lock")):
        yield


def check_store(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before training, if the store cannot be written or reached."""
    quiet_mlflow()
    db = _sqlite_path(uri)
    if db is not None:
        if not db.parent.is_dir():
            raise TrackingError(f"MLflow store {uri}: folder {db.parent} does not exist")
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"MLflow store {uri} is read-only; make it writable or set "
                                f"MLFLOW_TRACKING_URI to a writable store")
        if db.exists():
            try:  # a write transaction: fails at once if another program holds a lock
                with contextlib.closing(sqlite3.connect(db, timeout=timeout_s)) as con:
                    con.execute("BEGIN IMMEDIATE")
                    con.rollback()
                    # reads every page: damage in the middle of the file shows here, before
                    # any work, not as a 76-line traceback from MLflow later
                    problems = [" ".join(row[0].split()) for row in con.execute("PRAGMA quick_check(1)")]
            except sqlite3.DatabaseError as err:
                if "malformed" in str(err):  # damage in a page read before quick_check ran
                    raise TrackingError(f"MLflow store {uri} is damaged ({err}); move it aside (a "
                                        f"new one is created) or restore it from a backup") from err
                raise TrackingError(f"MLflow store {uri} cannot be written ({err}); is another "
                                    f"program holding it, or is it not an MLflow database?") from err
            if problems != ["ok"]:
                raise TrackingError(f"MLflow store {uri} is damaged ({problems[0]}); move it "
                                    f"aside (a new one is created) or restore it from a backup")
        return
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":  # sqlite://mlflow.db: two slashes make 'mlflow.db' a host
        raise TrackingError(f"MLflow store {uri}: not a SQLite URI MLflow reads; write "
                            f"sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if parsed.scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise TrackingError(f"MLflow store {uri} is a file store, which MLflow 3.13+ refuses by "
                            f"default; use sqlite:///path/mlflow.db, or set "
                            f"MLFLOW_ALLOW_FILE_STORE=true to keep the file store")
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
                pass
        except OSError as err:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({err}); start it, "
                                f"or unset MLFLOW_TRACKING_URI to use the local store") from err


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def process_tags() -> dict:
    """Which process holds a run open: lets a later run tell a dead one from a live one."""
    import psutil

    return {"mnistgen.host": socket.gethostname(), "mnistgen.pid": str(os.getpid()),
            "mnistgen.pid_started": f"{psutil.Process().create_time():.2f}"}


def run_tags(stage: str) -> dict:
    root = repo_root()
    tags = {"mlflow.source.git.commit": git_commit(root), "git_commit": git_commit(root),
            "dvc_stage": os.environ.get("DVC_STAGE", stage), **process_tags()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


def _process_alive(pid: str | None, started: str | None) -> bool:
    import psutil

    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1.0
    except (psutil.Error, TypeError, ValueError):
        return False


def close_orphaned_runs(client, experiment_id: str) -> list[str]:
    """Runs of this machine whose process is gone but which are still RUNNING (a kill -9, or
    a disk so full that MLflow could not record the end): mark them FAILED, saying why.
    Runs of live processes (a parallel experiment) and of other machines are left alone."""
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("mnistgen.host") != socket.gethostname() or _process_alive(
                tags.get("mnistgen.pid"), tags.get("mnistgen.pid_started")):
            continue
        client.set_tag(run.info.run_id, "error", "its process ended without closing the run (killed, "
                       "or the disk was full); marked FAILED when the next run started")
        client.set_terminated(run.info.run_id, "FAILED")
        closed.append(run.info.run_id)
    return closed


def reroot_artifacts(db: Path, root: Path) -> str | None:
    """mlflow.db records absolute artifact folders (`<root>/mlruns/N`). In a copied or moved
    repository they still name the old folder, so this copy's artifacts would land in the
    original's. Re-root every location under the old `<root>/mlruns` to this root's; returns
    the old root, or None when nothing pointed elsewhere."""
    new_prefix = str(Path(root) / "mlruns")
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        try:
            rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError:  # a new store: MLflow has not made its tables yet
            return None
        olds = set()
        for exp_id, location in rows:  # MLflow's own layout: <root>/mlruns/<experiment id>
            folder, _, last = (location or "").rpartition(os.sep)
            if last == str(exp_id) and Path(folder).name == "mlruns" and folder != new_prefix:
                olds.add(folder)
        if not olds:
            return None
        columns = [("experiments", "artifact_location"), ("runs", "artifact_uri"),
                   ("logged_models", "artifact_location"), ("model_versions", "storage_location")]
        with con:
            for old in olds:
                for table, column in columns:
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                                (new_prefix, len(old) + 1, old, len(old) + 1, old + os.sep))
    return str(Path(sorted(olds)[0]).parent)


@contextlib.contextmanager
def start_run(*, stage: str, params: dict, run_id: str | None = None, variant: str | None = None,
              settings: TrackingParams | None = None):
    """Check the store, then open an MLflow run for `stage` in the `draw-mnist` experiment,
    nested under this dvc invocation's parent run (or reopen run_id, when a resumed training
    continues its run). A Ctrl-C ends it KILLED, any other failure FAILED; either way the
    run's `error` tag says why. `settings` switch system metrics on (training runs)."""
    import mlflow

    uri = tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.tracking.MlflowClient()
    with store_lock(uri):
        db = _sqlite_path(uri)
        if db is not None and db == repo_root() / "mlflow.db" and db.exists():
            old = reroot_artifacts(db, repo_root())
            if old:
                print(f"MLflow: this repository was copied or moved from {old}; artifact folders "
                      f"in mlflow.db now point at {repo_root() / 'mlruns'}", file=sys.stderr)
        experiment_id = experiment()
        close_orphaned_runs(client, experiment_id)
        system = bool(settings and settings.system_metrics)
        if system:  # its start/stop notices are not progress: keep the stage's output clean
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            mlflow.set_system_metrics_sampling_interval(settings.system_metrics_every)
            mlflow.set_system_metrics_samples_before_logging(1)
        if run_id is not None and _run_exists(run_id):
            # a resumed training: its run again
            active = mlflow.start_run(run_id=run_id, log_system_metrics=system)
            mlflow.set_tags(process_tags())
            if "error" in active.data.tags:  # why it stopped before: no longer true
                client.delete_tag(run_id, "error")
        else:
            committed = (naming.committed_params(Path.cwd()) or {}).get(stage)  # this copy's HEAD
            name = naming.run_name(stage, params=params, baseline=committed, variant=variant,
                                   experiment=os.environ.get("DVC_EXP_NAME"))
            tags = run_tags(stage)
            parent = pipeline_parent(client, experiment_id)
            if parent is not None:
                tags["mlflow.parentRunId"] = parent
            active = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags,
                                      log_system_metrics=system)
            mlflow.log_params(naming.flat({**params, "variant": variant} if variant else params))
    try:
        yield active
    except (Interrupted, KeyboardInterrupt) as err:
        _close_quietly(str(err) or "interrupted (Ctrl-C)", "KILLED")
        raise
    except BaseException as err:
        _close_quietly(str(err)[:5000], "FAILED")  # the UI shows why; the stage prints it too
        raise
    mlflow.end_run()  # FINISHED
    parent = active.data.tags.get("mlflow.parentRunId")
    if parent:  # the parent's duration spans its stages
        client.set_terminated(parent, "FINISHED", end_time=int(time.time() * 1000))


def experiment() -> str:
    """The id of the `draw-mnist` experiment, created (and marked model training) if needed."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    exp = mlflow.set_experiment(EXPERIMENT)
    key, kind = EXPERIMENT_KIND
    # and the per-stage experiments of earlier versions (draw-mnist/train_gan, ...)
    older = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT}/%'")
    for each in [exp, *older]:
        if each.tags.get(key) != kind:
            client.set_experiment_tag(each.experiment_id, key, kind)
    return exp.experiment_id


def ui_path(experiment_id: str | None) -> str:
    """The UI page (after the server's address) of the experiment's runs table, in the UI's
    model-training view: MLflow 3.17 otherwise opens experiments on GenAI traces."""
    page = f"#/experiments/{experiment_id}/runs" if experiment_id else "#/experiments"
    return f"{page}?{UI_WORKFLOW}"


def dvc_invocation() -> tuple[str, str] | None:
    """(key, command) of the `dvc repro` / `dvc exp run` process this stage runs under
    (DVC starts each stage through a shell), or None when run by hand."""
    import psutil

    try:
        proc = psutil.Process().parent()
        while proc is not None:
            words = proc.cmdline()[:4]
            for i, word in enumerate(words):
                if Path(word).stem == "dvc" or (word == "-m" and words[i + 1:i + 2] == ["dvc"]):
                    start = i + 1 + (word == "-m")
                    command = " ".join(["dvc", *[w for w in words[start:start + 2] if not w.startswith("-")]])
                    return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.2f}", command
            proc = proc.parent()
    except psutil.Error:
        return None
    return None


def pipeline_parent(client, experiment_id: str) -> str | None:
    """The parent run of this dvc invocation (created by its first stage), or None. One per
    `dvc repro` / `dvc exp run` (per experiment in a queue): its stages sit together."""
    invocation = dvc_invocation()
    if invocation is None:
        return None
    exp_name = os.environ.get("DVC_EXP_NAME")
    key = f"{exp_name or ''}@{invocation[0]}"
    found = client.search_runs([experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{key}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    import yaml

    from mlflow.entities import Param

    # the stage's own copy (`dvc exp run --temp` and queued runs work in a temporary copy;
    # DVC_ROOT names the original), already validated by check_params
    with open("params.yaml") as f:
        everything = yaml.safe_load(f) or {}
    name = naming.run_name(invocation[1], params=everything, experiment=exp_name,
                           baseline=naming.committed_params(Path.cwd()))
    tags = {INVOCATION_TAG: key, "mnistgen.role": "pipeline", "git_commit": git_commit(repo_root())}
    if exp_name:
        tags["dvc_exp_name"] = exp_name
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in naming.flat(everything).items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _close_quietly(error: str, status: str) -> None:
    """Record why the active run ended; a store that cannot take it (a full disk) must not
    bury the real error under its own: the next run marks this one instead."""
    import mlflow

    try:
        tag_run(error=error)
        mlflow.end_run(status=status)
    except Exception:  # noqa: BLE001 - the error being raised is the one that matters
        pass


def metric_logger(metric: str, progress):
    """on_log(step, value) for a training loop: the value goes to the active MLflow run as
    `train/<metric>` and onto the progress line as `metric`."""
    import mlflow

    def on_log(step: int, value: float) -> None:
        mlflow.log_metric(f"train/{metric}", value, step=step)
        progress.update(step, **{metric: value})
    return on_log


def log_metrics(metrics: dict, step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics(metrics, step=step)


def tag_run(**tags) -> None:
    """Set the tags whose value is not None on the active run."""
    import mlflow

    mlflow.set_tags({k: v for k, v in tags.items() if v is not None})


def _run_exists(run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def log_image(image: np.ndarray, key: str, step: int) -> None:
    """(H, W) or (H, W, 3) uint8 -> an image series the UI shows step by step."""
    import mlflow

    mlflow.log_image(image, key=key, step=step)


def log_picture(image: np.ndarray, filename: str) -> None:
    """One picture as a plain artifact at the run's top level (not a step series): files of
    the same name in two runs show side by side in the UI's compare view."""
    import mlflow

    mlflow.log_image(image, artifact_file=filename)


def log_metrics_to_parent(metrics: dict) -> None:
    """Copy metrics onto the active run's parent (its dvc invocation), if it has one: the
    collapsed runs table and chart view then show each pipeline run's scores."""
    import mlflow

    parent = mlflow.active_run().data.tags.get("mlflow.parentRunId")
    if parent:
        client = mlflow.tracking.MlflowClient()
        for key, value in metrics.items():
            client.log_metric(parent, key, value)


def log_file(path: Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def quiet_mlflow() -> None:
    """Against a remote server: fail in seconds rather than retry for minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def log_mnist_input(data_path: Path, context: str = "training") -> None:
    """Record which data the run saw: the artifact's path and its sha256 digest."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from mnistgen.data import sha256_file

    digest = sha256_file(data_path)
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(Path(data_path).resolve()))
    mlflow.log_input(MetaDataset(source=source, name="mnist", digest=digest[:32]), context=context)
    mlflow.set_tag("data_sha256", digest)
