"""Run records: a stage's MLflow run, opened named and tagged under its dvc invocation's
parent run, and the Recorder the stage logs through.

    with runs.start_run(stage="train_gan", params=asdict(params), settings=settings) as run:
        run.metrics({"train/loss_d": 0.9}, step=50)
        run.image(grid, "digits", step=50)

Opening a run needs the store (a server unreachable at the start fails fast, in one line).
After that, every record goes through mnistgen.outbox: a server that goes away mid-training
delays the records, never the training. Names: mnistgen.naming.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import threading
from pathlib import Path

from mnistgen import naming
from mnistgen.outbox import Outbox, send_waiting, waiting
from mnistgen.params import field
from mnistgen.runtime import Interrupted
from mnistgen.store import (TrackingError, check_store, close_orphaned_runs, drop_unfinished_models,
                            experiment, git_commit, process_tags, reroot_artifacts, repo_root,
                            sqlite_path, store_full, store_lock, tracking_uri)

INVOCATION_TAG = "mnistgen.invocation"  # marks a parent run: which dvc process it stands for
FAILED_CLOSE_WAIT_S = 10  # after a failure or Ctrl-C the error matters more than the wait


@dataclasses.dataclass
class TrackingParams:
    """params.yaml's `tracking` section: what MLflow records; changes no output."""
    system_metrics: bool = field(doc="CPU, memory (and GPU) of training runs, as system/* metrics")
    system_metrics_every: int = field(lo=1, hi=3600, doc="seconds between system metric samples")
    outage_wait: int = field(lo=0, hi=86400, doc="seconds a finished stage waits for an unreachable "
                                                 "tracking server before leaving the rest in .mlflow-outbox/")


def open_client(uri: str):
    """A client of `uri`, also made MLflow's default (model logging reads the default)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.tracking.MlflowClient(uri)


@contextlib.contextmanager
def start_run(*, stage: str, params: dict, settings: TrackingParams, run_id: str | None = None,
              variant: str | None = None):
    """Check the store, then open an MLflow run for `stage` in the `draw-mnist` experiment,
    nested under this dvc invocation's parent run (or reopen run_id, when a resumed training
    continues its run); yields its Recorder. A Ctrl-C ends the run KILLED, any other failure
    FAILED; either way the run's `error` tag says why."""
    uri, root = tracking_uri(), repo_root()
    check_store(uri)
    client = open_client(uri)
    with store_lock(uri), _refused_by_store(uri):
        experiment_id = prepare_store(client, uri)
        if run_id is not None and _run_exists(client, run_id):
            parent = _reopen(client, run_id)
        else:
            run_id, parent = _create(client, experiment_id, stage=stage, params=params, variant=variant)
    recorder = Recorder(stage=stage, run_id=run_id, parent=parent, settings=settings,
                        outbox=Outbox(root=root, uri=uri, run_id=run_id))
    try:
        yield recorder
    except (Interrupted, KeyboardInterrupt) as err:
        recorder.close("KILLED", error=str(err) or "interrupted (Ctrl-C)")
        raise
    except BaseException as err:
        recorder.close("FAILED", error=str(err)[:5000])  # the UI shows why; the stage prints it too
        raise
    recorder.close("FINISHED")


@contextlib.contextmanager
def _refused_by_store(uri: str):
    """A store that answers its health check and then fails to open a run (a server whose
    database is gone or broken answers 5xx): one line before training, not MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        if store_full(err):
            raise
        raise TrackingError(f"MLflow store {uri} answered but could not open a run "
                            f"({' '.join(str(err).split())[:200]}); see the server's log, then "
                            f"rerun") from err


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
    try:
        send_waiting(root, uri)
    except Exception as err:  # noqa: BLE001 - a full store is reported as such by the stage
        if store_full(err):
            raise
        raise TrackingError(f"MLflow store {uri}: records held back by an outage could not be "
                            f"sent ({' '.join(str(err).split())[:200]}); they stay in "
                            f".mlflow-outbox/ for the next try") from err
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

    client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in process_tags().items()])
    tags = client.get_run(run_id).data.tags
    if "error" in tags:  # why it stopped before: no longer true
        client.delete_tag(run_id, "error")
    return tags.get("mlflow.parentRunId")


def _create(client, experiment_id: str, *, stage: str, params: dict, variant: str | None):
    """A new run, named and tagged, its params logged. -> (run id, parent run id or None)."""
    from mlflow.entities import Param

    committed = (naming.committed_params(Path.cwd()) or {}).get(stage)  # this copy's HEAD
    name = naming.run_name(stage, params=params, baseline=committed, variant=variant,
                           experiment=os.environ.get("DVC_EXP_NAME"))
    tags = run_tags(stage)
    parent = pipeline_parent(client, experiment_id)
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    logged = naming.flat({**params, "variant": variant} if variant else params)
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in logged.items()])
    return run_id, parent


def run_tags(stage: str) -> dict:
    commit = git_commit(repo_root())
    tags = {"mlflow.source.git.commit": commit, "git_commit": commit,
            "dvc_stage": os.environ.get("DVC_STAGE", stage), **process_tags()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
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


class Recorder:
    """What a stage logs to its run, each call one outbox record (sent in the background)."""

    def __init__(self, *, stage: str, run_id: str, parent: str | None, outbox: Outbox,
                 settings: TrackingParams):
        self.stage, self.run_id, self.parent, self.outbox = stage, run_id, parent, outbox
        self.settings = settings
        self.sampler = SystemSampler(outbox, settings.system_metrics_every) if settings.system_metrics else None
        if self.sampler is not None:
            self.sampler.start()

    def metrics(self, values: dict, step: int | None = None, *, on_parent: bool = False) -> None:
        """Metric values at `step`; `on_parent`: on the pipeline run instead (its scores)."""
        if on_parent and self.parent is None:
            return
        self.outbox.put("metrics", metrics={k: float(v) for k, v in values.items()}, step=step,
                        **({"run": self.parent} if on_parent else {}))

    def tags(self, **tags) -> None:
        """Set the tags whose value is not None."""
        values = {k: str(v) for k, v in tags.items() if v is not None}
        if values:
            self.outbox.put("tags", tags=values)

    def image(self, image, key: str, step: int) -> None:
        """(H, W) or (H, W, 3) uint8 -> an image series the UI shows step by step."""
        self.outbox.put("image", key=key, step=step, file=self.outbox.keep_array(image))

    def picture(self, image, filename: str) -> None:
        """One picture as a plain artifact at the run's top level (not a step series): files
        of the same name in two runs show side by side in the UI's compare view."""
        self.outbox.put("picture", name=filename, file=self.outbox.keep_array(image))

    def file(self, path: Path, artifact_path: str | None = None) -> None:
        self.outbox.put("file", path=artifact_path, file=self.outbox.keep_file(Path(path)))

    def dataset(self, data_path: Path, context: str = "training") -> None:
        """Which data the run saw: the file's path and its sha256 digest."""
        from mnistgen.data import sha256_file

        digest = sha256_file(data_path)
        self.outbox.put("dataset", name="mnist", digest=digest[:32], context=context,
                        path=str(Path(data_path).resolve()))
        self.tags(data_sha256=digest)

    def model(self, *, kind: str, checkpoint: Path, name: str, registered: str | None = None) -> None:
        """The model in `checkpoint` logged (and registered) in a safe format: see
        mnistgen.registry.deliver_model."""
        self.outbox.put("model", kind=kind, name=name, registered=registered,
                        checkpoint=self.outbox.keep_file(Path(checkpoint)))

    def metric_logger(self, metric: str, progress):
        """on_log(step, value) for a training loop: the value goes to the run as
        `train/<metric>` and onto the progress line as `metric`."""
        def on_log(step: int, value: float) -> None:
            self.metrics({f"train/{metric}": value}, step=step)
            progress.update(step, **{metric: value})
        return on_log

    def close(self, status: str, error: str | None = None) -> None:
        """Record the end, then wait (bounded) for delivery; say in one line what an outage
        still holds back. A journal that cannot be written (a full disk) must not bury the
        error being raised: the next run marks this one FAILED instead."""
        if self.sampler is not None:
            self.sampler.stop()
        try:
            if error is not None:
                self.tags(error=error)
            self.outbox.put("end", status=status)
            if status == "FINISHED" and self.parent:
                self.outbox.put("end", run=self.parent, status="FINISHED")
        except Exception:  # noqa: BLE001 - a full disk or store: the error being raised matters
            pass
        wait = self.settings.outage_wait if status == "FINISHED" else min(self.settings.outage_wait,
                                                                          FAILED_CLOSE_WAIT_S)
        left = self.outbox.close(wait)
        if status != "FINISHED":  # a failing stage says why in its own line
            return
        if self.outbox.failure is not None:  # the store is full: the stage fails, in one line
            raise self.outbox.failure
        if left:
            print(f"{self.stage}: MLflow: {self.outbox.uri} did not take {describe(left)} of run "
                  f"{self.run_id} ({self.outbox.problem or 'no answer'}); they wait in "
                  f"{self.outbox.folder.relative_to(repo_root())}/: the next `dvc repro` or "
                  f"`python -m mnistgen.outbox` (same MLFLOW_TRACKING_URI) sends them", file=sys.stderr, flush=True)


def describe(left: dict) -> str:
    """{op: count} -> '3 metric records, 2 images, 1 model, 2 run ends'."""
    words = {"metrics": ("metric record", "metric records"), "tags": ("tag record", "tag records"),
             "end": ("run end", "run ends"), "delete_tag": ("tag removal", "tag removals")}
    parts = []
    for op, n in left.items():
        one, many = words.get(op, (op, op + "s"))
        parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts)


class SystemSampler:
    """CPU, memory, disk and network (and GPU, with nvidia-ml-py) every `every` seconds as
    system/* metrics, through the outbox like every other record (MLflow's own monitor
    stops for good at the first failed request)."""

    def __init__(self, outbox: Outbox, every: float):
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
        from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

        self.monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
        with contextlib.suppress(Exception):  # no NVIDIA library or no GPU: no GPU metrics
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

            self.monitors.append(GPUMonitor())
        self.outbox, self.every = outbox, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        """A sample every `every` seconds, and a last one when the run ends (a short run
        still gets one)."""
        step, stopped = 0, False
        while not stopped:
            stopped = self._stop.wait(self.every)
            values = {}
            for monitor in self.monitors:
                monitor.collect_metrics()
                values.update(monitor.aggregate_metrics())
                monitor.clear_metrics()
            with contextlib.suppress(OSError):  # a full disk: the stage reports it, not this thread
                self.outbox.put("metrics", metrics={f"system/{k}": v for k, v in values.items()}, step=step)
            step += 1
