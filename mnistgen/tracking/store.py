"""The MLflow store and its hygiene: where it is, a check before any work, the experiment,
its errors in one line, and repairs a copied repository or a killed process need.

The store defaults to `sqlite:///<repo root>/mlflow.db`, where the root is DVC_ROOT (set by
DVC, also for `dvc exp run --queue/--temp` runs in a temporary copy) or the working
directory. MLFLOW_TRACKING_URI overrides it (a team's `http://` server, say).

Every run goes to one experiment, `draw-mnist`, marked as model training (so the UI opens
it on its runs table). Runs and their names: runs, naming; delivery: outbox; keeping the store in
step with DVC's outputs: reconcile (all in mnistgen.tracking).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from mnistgen.errors import ProjectError, one_line
from mnistgen.tracking.names import ERROR_TAG, EXPERIMENT, HOST_TAG, PID_STARTED_TAG, PID_TAG
# what the experiment is, for MLflow versions whose UI picks its GenAI pages (traces) or its
# runs table by this tag. MLflow 3.17's UI ignores it and follows its "GenAI | Model
# training" switch (a URL parameter, else the browser's last choice, else GenAI): ui_path.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
UI_WORKFLOW = "workflowType=machine_learning"  # the switch on "Model training"


class TrackingError(ProjectError, RuntimeError):
    """The MLflow tracking store cannot be used."""


class StoreFull(TrackingError):
    """The store ran out of disk: not an outage that passes."""

    def __init__(self, uri: str):
        super().__init__(f"the MLflow store's disk is full ({uri}); free space and rerun: the run "
                         f"left open is marked FAILED then")


@contextlib.contextmanager
def one_line_errors(uri: str, doing: str):
    """MLflow's errors while `doing` (e.g. "opening a run") as one of ours, in one line: a
    full store, a server gone away, a store that answered but failed. Anything else (a bug)
    keeps its traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except TrackingError:
        raise
    except Exception as err:  # noqa: BLE001 - sorted below; the rest re-raised as it was
        if store_full(err):
            raise StoreFull(uri) from err
        if is_remote(uri) and not reachable(uri):
            raise TrackingError(f"MLflow tracking server {uri} went away while {doing}; rerun "
                                f"`dvc repro` when it is back") from err
        if isinstance(err, MlflowException):
            raise TrackingError(f"MLflow store {uri} failed while {doing} ({one_line(err)}); "
                                f"see the server's log, then rerun") from err
        raise


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def open_client(uri: str):
    """A client of `uri`, also made MLflow's default (model logging reads the default)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.tracking.MlflowClient(uri)


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialize store creation/migration and run creation between processes on one SQLite
    file: concurrent first use of a new store is what fails with 'database is locked'."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock  # an OS lock on POSIX and Windows alike

    with FileLock(db.with_name(db.name + ".lock")):
        yield


def store_full(err: BaseException) -> bool:
    """Whether the store ran out of disk: SQLite under MLflow and SQLAlchemy (which wrap it
    twice), or a local artifact folder."""
    while err is not None:
        if "database or disk is full" in str(err) or (isinstance(err, OSError)
                                                      and err.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        err = err.__cause__ or err.__context__
    return False


def quiet_mlflow() -> None:
    """MLflow's progress notices (table creation, artifact progress bars) are not the
    stage's progress. Against a server, one request fails in seconds: the outbox
    (mnistgen.tracking.outbox) retries, not MLflow's minutes of blocking back-off."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the stages say what matters
    __import__("mlflow")  # it sets its loggers' levels when imported: set ours after that

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # it logs every database error it raises, traceback and all: the stage reports it once
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def check_store(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before training, if the store cannot be written or reached."""
    quiet_mlflow()
    db = sqlite_path(uri)
    if db is not None:
        _check_sqlite(uri, db, timeout_s)
        return
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":  # sqlite://mlflow.db: two slashes make 'mlflow.db' a host
        raise TrackingError(f"MLflow store {uri}: not a SQLite URI MLflow reads; write "
                            f"sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if parsed.scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise TrackingError(f"MLflow store {uri} is a file store, which MLflow 3.13+ refuses by "
                            f"default; use sqlite:///path/mlflow.db, or set "
                            f"MLFLOW_ALLOW_FILE_STORE=true to keep the file store")
    if is_remote(uri) and not reachable(uri, timeout_s):
        raise TrackingError(f"MLflow tracking server {uri} is unreachable; start it, or unset "
                            f"MLFLOW_TRACKING_URI to use the local store")


def reachable(uri: str, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to an http(s) server opens."""
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _check_sqlite(uri: str, db: Path, timeout_s: float) -> None:
    if not db.parent.is_dir():
        raise TrackingError(f"MLflow store {uri}: folder {db.parent} does not exist")
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise TrackingError(f"MLflow store {uri} is read-only; make it writable or set "
                            f"MLFLOW_TRACKING_URI to a writable store")
    if not db.exists():
        return
    try:  # a write transaction: fails at once if another program holds a lock
        with contextlib.closing(sqlite3.connect(db, timeout=timeout_s)) as con:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
            # reads every page: damage in the middle of the file shows here, before any
            # work, not as a 76-line traceback from MLflow later
            problems = [" ".join(row[0].split()) for row in con.execute("PRAGMA quick_check(1)")]
    except sqlite3.DatabaseError as err:
        if "malformed" in str(err):  # damage in a page read before quick_check ran
            raise TrackingError(f"MLflow store {uri} is damaged ({err}); move it aside (a new "
                                f"one is created) or restore it from a backup") from err
        raise TrackingError(f"MLflow store {uri} cannot be written ({err}); is another program "
                            f"holding it, or is it not an MLflow database?") from err
    if problems != ["ok"]:
        raise TrackingError(f"MLflow store {uri} is damaged ({problems[0]}); move it aside (a "
                            f"new one is created) or restore it from a backup")


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def experiment(client) -> str:
    """The id of the `draw-mnist` experiment, created (and marked model training) if needed;
    the per-stage experiments of earlier versions (draw-mnist/train_gan, ...) marked too."""
    from mlflow.exceptions import MlflowException

    key, kind = EXPERIMENT_KIND
    if client.get_experiment_by_name(EXPERIMENT) is None:
        try:
            client.create_experiment(EXPERIMENT, tags={key: kind})
        except MlflowException:  # another process (a parallel experiment) made it first
            pass
    current = client.get_experiment_by_name(EXPERIMENT)
    older = client.search_experiments(filter_string=f"name LIKE '{EXPERIMENT}/%'")
    for each in [current, *older]:
        if each.tags.get(key) != kind:
            client.set_experiment_tag(each.experiment_id, key, kind)
    return current.experiment_id


def ui_path(experiment_id: str | None) -> str:
    """The UI page (after the server's address) of the experiment's runs table, in the UI's
    model-training view: MLflow 3.17 otherwise opens experiments on GenAI traces."""
    page = f"#/experiments/{experiment_id}/runs" if experiment_id else "#/experiments"
    return f"{page}?{UI_WORKFLOW}"


def process_tags() -> dict:
    """Which process holds a run open: lets a later run tell a dead one from a live one."""
    import psutil

    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            PID_STARTED_TAG: f"{psutil.Process().create_time():.2f}"}


def _process_alive(pid: str | None, started: str | None) -> bool:
    import psutil

    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1.0
    except (psutil.Error, TypeError, ValueError):
        return False


def close_orphaned_runs(client, experiment_id: str, keep: set[str] = frozenset()) -> list[str]:
    """Runs of this machine whose process is gone but which are still RUNNING (a kill -9, or
    a disk so full that MLflow could not record the end): mark them FAILED, saying why.
    Runs of live processes (a parallel experiment), of other machines and those in `keep`
    (their end is still in an outbox, waiting for the server) are left alone."""
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if run.info.run_id in keep or tags.get(HOST_TAG) != socket.gethostname() or \
                _process_alive(tags.get(PID_TAG), tags.get(PID_STARTED_TAG)):
            continue
        client.set_tag(run.info.run_id, ERROR_TAG, "its process ended without closing the run (killed, "
                       "or the disk was full); marked FAILED when the next run started")
        client.set_terminated(run.info.run_id, "FAILED")
        closed.append(run.info.run_id)
    return closed


def drop_unfinished_models(client, experiment_id: str) -> list[str]:
    """Logged models left PENDING by a run that is no longer RUNNING (a full disk or a kill
    cut their upload short): removed, with their local artifact folder. -> their ids."""
    dropped = []
    for model in logged_models(client, experiment_id):
        if model_status(model) != "PENDING" or (
                model.source_run_id and client.get_run(model.source_run_id).info.status == "RUNNING"):
            continue  # finished, or still being logged by a live process
        drop_model(client, model)
        dropped.append(model.model_id)
    return dropped


def logged_models(client, experiment_id: str, filter_string: str | None = None) -> list:
    """Every logged model of the experiment (all pages). MLflow 3.17's SQL store does not
    filter on status, so callers look at `model_status` themselves."""
    found, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], filter_string=filter_string,
                                           page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found


def model_status(model) -> str:
    """'PENDING', 'READY' or 'FAILED' (MLflow hands back an enum)."""
    return getattr(model.status, "value", str(model.status))


def drop_model(client, model) -> None:
    """Delete a logged model and, in a local store, the files it left."""
    import shutil
    from urllib.parse import unquote

    client.delete_logged_model(model.model_id)
    location = model.artifact_location or ""
    folder = Path(unquote(urlparse(location).path)) if location.startswith("file:") else Path(location)
    if folder.is_absolute() and folder.name == "artifacts" and folder.parent.name == model.model_id:
        shutil.rmtree(folder.parent, ignore_errors=True)  # <exp>/models/<model id>/


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
