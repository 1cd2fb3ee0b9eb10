"""Runs: a stage's MLflow run, opened named and tagged under its dvc invocation's parent
run; the one place a run is created.

    with runs.start_run(stage="train_gan", params=asdict(params), settings=settings) as record:
        record.metrics({"train/loss_d": 0.9}, step=50)
        record.digits(grid, step=50)

Opening a run needs the store (a server unreachable at the start fails fast, in one line).
After that, every record goes through the outbox (mnistgen.tracking.recorder): a server
that goes away mid-training delays the records, never the training. Names: naming.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

from mnistgen.params import read_params
from mnistgen.runtime import Interrupted
from mnistgen.tracking import naming
from mnistgen.tracking.names import (EXP_NAME_TAG, GIT_TAG, INVOCATION_TAG, PARENT_TAG, ROLE_TAG,
                                     SOURCE_COMMIT_TAG, STAGE_TAG)
from mnistgen.tracking.outbox import send_waiting, waiting
from mnistgen.tracking.recorder import HANDLERS, Recorder
from mnistgen.tracking.settings import TrackingParams
from mnistgen.tracking.store import (check_store, close_orphaned_runs, drop_unfinished_models,
                                     experiment, git_commit, one_line_errors, open_client,
                                     process_tags, reroot_artifacts, repo_root, sqlite_path,
                                     store_lock, tracking_uri)


@contextlib.contextmanager
def start_run(*, stage: str, params: dict, settings: TrackingParams, run_id: str | None = None,
              variant: str | None = None, tags: dict | None = None):
    """Check the store, then open an MLflow run for `stage` in the `draw-mnist` experiment,
    nested under this dvc invocation's parent run (or reopen run_id, when a resumed training
    continues its run); yields its Recorder. A Ctrl-C ends the run KILLED, any other failure
    FAILED; either way the run's `error` tag says why."""
    uri, root = tracking_uri(), repo_root()
    check_store(uri)
    client = open_client(uri)
    with store_lock(uri), one_line_errors(uri, "opening a run"):
        experiment_id = prepare_store(client, uri)
        if run_id is not None and _run_exists(client, run_id):
            parent = _reopen(client, run_id)
        else:
            run_id, parent = stage_run(client, experiment_id, stage=stage, params=params,
                                       variant=variant, tags=tags)
    recorder = Recorder(stage=stage, variant=variant, run_id=run_id, parent=parent, uri=uri,
                        root=root, settings=settings)
    try:
        yield recorder
    except (Interrupted, KeyboardInterrupt) as err:
        recorder.close("KILLED", error=str(err) or "interrupted (Ctrl-C)")
        raise
    except BaseException as err:
        recorder.close("FAILED", error=str(err)[:5000])  # the UI shows why; the stage prints it too
        raise
    recorder.close("FINISHED")


def prepare_store(client, uri: str) -> str:
    """Before a run opens (under store_lock): a moved repository's artifact folders pointed
    home, the experiment made, records an outage held back sent, runs of dead processes
    closed. Returns the experiment id."""
    root = repo_root()
    db = sqlite_path(uri)
    if db is not None and db == root / "mlflow.db" and db.exists():
        old = reroot_artifacts(db, root)
        if old:
            print(f"MLflow: this repository was copied or moved from {old}; artifact folders in "
                  f"mlflow.db now point at {root / 'mlruns'}", file=sys.stderr)
    experiment_id = experiment(client)
    with one_line_errors(uri, "sending records an outage held back"):
        _, left = send_waiting(root, uri, HANDLERS)
    for line in left:  # an old journal never stops a stage: it waits for the next try
        print(f"MLflow: a journal in .mlflow-outbox/ waits for the next try ({line})",
              file=sys.stderr, flush=True)
    close_orphaned_runs(client, experiment_id, keep=set(waiting(root)))
    drop_unfinished_models(client, experiment_id)
    return experiment_id


def _run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _reopen(client, run_id: str) -> str | None:
    """A resumed training: its run again, RUNNING, with this process's tags. -> its parent."""
    from mlflow.entities import RunTag

    from mnistgen.tracking.names import ERROR_TAG

    client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in process_tags().items()])
    tags = client.get_run(run_id).data.tags
    if ERROR_TAG in tags:  # why it stopped before: no longer true
        client.delete_tag(run_id, ERROR_TAG)
    return tags.get(PARENT_TAG)


def new_run(client, experiment_id: str, *, name: str, tags: dict, params: dict) -> str:
    """The one place a run is created: named, tagged, its params logged (flattened, as
    MLflow's compare view lists them). -> its id."""
    from mlflow.entities import Param

    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    logged = naming.flat(params)
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in logged.items()])
    return run_id


def stage_run(client, experiment_id: str, *, stage: str, params: dict, variant: str | None,
              tags: dict | None = None) -> tuple[str, str | None]:
    """A stage's run (trained here, or recorded from DVC's outputs: `tags` say which), named
    after what changed against the committed params.yaml, under this invocation's parent.
    -> (run id, parent run id or None)."""
    committed = (naming.committed_params(Path.cwd()) or {}).get(stage)  # this copy's HEAD
    name = naming.run_name(stage, params=params, baseline=committed, variant=variant,
                           experiment=os.environ.get("DVC_EXP_NAME"))
    all_tags = {**run_tags(stage), **(tags or {})}
    parent = pipeline_parent(client, experiment_id)
    if parent is not None:
        all_tags[PARENT_TAG] = parent
    logged = {**params, "variant": variant} if variant else params
    return new_run(client, experiment_id, name=name, tags=all_tags, params=logged), parent


def run_tags(stage: str) -> dict:
    commit = git_commit(repo_root())
    tags = {SOURCE_COMMIT_TAG: commit, GIT_TAG: commit,
            STAGE_TAG: os.environ.get("DVC_STAGE", stage), **process_tags()}
    if os.environ.get("DVC_EXP_NAME"):
        tags[EXP_NAME_TAG] = os.environ["DVC_EXP_NAME"]
    return tags


def dvc_invocation() -> tuple[str, str] | None:
    """(key, command) of the `dvc repro` / `dvc exp run` process this stage runs under
    (DVC starts each stage through a shell), or None when run by hand."""
    import psutil

    try:
        proc = psutil.Process().parent()
        while proc is not None:
            command = dvc_command(proc.cmdline())
            if command is not None:
                return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.2f}", command
            proc = proc.parent()
    except psutil.Error:
        return None
    return None


def dvc_command(cmdline: list[str]) -> str | None:
    """'dvc repro' / 'dvc exp run' from a process's command line, or None if it is not dvc.
    A queued experiment runs under DVC's worker, `dvc exp exec-run`: the parent run is
    named after what the user typed, `dvc exp run`."""
    words = cmdline[:6]
    for i, word in enumerate(words):
        if Path(word).stem == "dvc" or (word == "-m" and words[i + 1:i + 2] == ["dvc"]):
            start = i + 1 + (word == "-m")
            command = " ".join(["dvc", *[w for w in words[start:start + 2] if not w.startswith("-")]])
            return command.replace("dvc exp exec-run", "dvc exp run")
    return None


def pipeline_parent(client, experiment_id: str, create: bool = True) -> str | None:
    """The parent run of this dvc invocation (made by its first stage that logs, when
    `create`), or None. One per `dvc repro` / `dvc exp run` (per experiment in a queue)."""
    invocation = dvc_invocation()
    if invocation is None:
        return None
    exp_name = os.environ.get("DVC_EXP_NAME")
    key = f"{exp_name or ''}@{invocation[0]}"
    found = client.search_runs([experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{key}'",
                               max_results=1)
    if found or not create:
        return found[0].info.run_id if found else None
    # the stage's own copy (`dvc exp run --temp` and queued runs work in a temporary copy;
    # DVC_ROOT names the original), already validated by check_params, read as stages read it
    everything = read_params("params.yaml")
    name = naming.run_name(invocation[1], params=everything, experiment=exp_name,
                           baseline=naming.committed_params(Path.cwd()))
    tags = {INVOCATION_TAG: key, ROLE_TAG: "pipeline", GIT_TAG: git_commit(repo_root())}
    if exp_name:
        tags[EXP_NAME_TAG] = exp_name
    run_id = new_run(client, experiment_id, name=name, tags=tags, params=everything)
    client.set_terminated(run_id, "FINISHED")
    return run_id

