"""The Recorder a stage logs its run through: each call one outbox record, sent in the
background (mnistgen.tracking.outbox), so a tracking outage delays records, never the work.
Stages get one from mnistgen.tracking.runs.start_run; reconcile uses one to record a run
from DVC's outputs, so both write the same records under the same names."""
from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

from mnistgen.data import sha256_file
from mnistgen.tracking import registry
from mnistgen.tracking.names import (CHECKPOINT_TAG, DATA_TAG, ERROR_TAG, FINAL_PICTURE,
                                     GRID_IMAGE, logged_model)
from mnistgen.tracking.outbox import Outbox
from mnistgen.tracking.settings import TrackingParams
from mnistgen.tracking.store import StoreFull, one_line_errors, open_client, repo_root

# records the outbox itself does not know how to send (a stage's and sync_mlflow's alike:
# any journal left behind may hold any of them)
HANDLERS = {"model": registry.deliver_model, "scores": registry.deliver_scores,
            "alias": registry.deliver_alias}
FAILED_CLOSE_WAIT_S = 10  # after a failure or Ctrl-C the error matters more than the wait


class Recorder:
    """What a stage logs to its run, each call one outbox record (sent in the background)."""

    def __init__(self, *, stage: str, variant: str | None, run_id: str, parent: str | None,
                 uri: str, root: Path, settings: TrackingParams):
        self.stage, self.variant, self.run_id, self.parent = stage, variant, run_id, parent
        self.settings = settings
        self.outbox = Outbox(root=root, uri=uri, run_id=run_id, handlers=HANDLERS)
        self.sampler = SystemSampler(self.outbox, settings.system_metrics_every) if settings.system_metrics else None
        if self.sampler is not None:
            self.sampler.start()

    def _put(self, op: str, **fields) -> None:
        if self.outbox.failure is not None:  # the sender found the store full: stop in one line
            raise StoreFull(self.outbox.uri) from self.outbox.failure
        self.outbox.put(op, **fields)

    def metrics(self, values: dict, step: int | None = None, *, on_parent: bool = False) -> None:
        """Metric values at `step`; `on_parent`: on the pipeline run instead (its scores)."""
        if on_parent and self.parent is None:
            return
        self._put("metrics", metrics={k: float(v) for k, v in values.items()}, step=step,
                  **({"run": self.parent} if on_parent else {}))

    def tags(self, **tags) -> None:
        """Set the tags whose value is not None."""
        values = {k: str(v) for k, v in tags.items() if v is not None}
        if values:
            self._put("tags", tags=values)

    def digits(self, image, step: int) -> None:
        """A grid of digits (uint8 (H, W), one row per digit) in the run's image series,
        which the UI shows step by step."""
        self._put("image", key=GRID_IMAGE, step=step, array=image)

    def final_digits(self, image) -> None:
        """The final grid as a plain file at the run's top level (not a step series): the
        files of two runs show side by side in the UI's compare view."""
        self._put("picture", name=FINAL_PICTURE, array=image)

    def file(self, path: Path, artifact_path: str | None = None) -> None:
        self._put("file", path=artifact_path, source=Path(path))

    def dataset(self, data_path: Path, context: str = "training") -> None:
        """Which data the run saw: the file's path and its sha256 digest."""
        digest = sha256_file(data_path)
        self._put("dataset", name="mnist", digest=digest[:32], context=context,
                  path=str(Path(data_path).resolve()))
        self.tags(**{DATA_TAG: digest})

    def model(self, checkpoint: Path) -> None:
        """The stage's checkpoint: its sha256 tagged (what the store finds the run by) and
        its model logged (and registered) in a safe format, as names.logged_model says for
        this stage (see registry.deliver_model). Sent only if the run ends FINISHED."""
        logged = logged_model(self.stage, self.variant)
        self.tags(**{CHECKPOINT_TAG: sha256_file(checkpoint)})
        self._put("model", kind=logged.kind, name=logged.name, registered=logged.registered,
                  source=Path(checkpoint), if_finished=True)

    def link_sources(self, sources: dict) -> None:
        """Which training run and checkpoint each scored row came from (evaluate)."""
        with one_line_errors(self.outbox.uri, "looking up the scored runs"):
            self.tags(**registry.source_tags(open_client(self.outbox.uri), sources))

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
                self.tags(**{ERROR_TAG: error})
            self.outbox.put("end", status=status)
            if status == "FINISHED" and self.parent:
                self.outbox.put("end", run=self.parent, status="FINISHED")
        except Exception:  # noqa: BLE001 - a full disk or store: the error being raised matters
            pass
        wait = self.settings.outage_wait if status == "FINISHED" else min(self.settings.outage_wait,
                                                                          FAILED_CLOSE_WAIT_S)
        left = self.outbox.close(wait)
        if self.outbox.unjournaled:  # training went on; the records went from memory
            lost = self.outbox.lost()
            print(f"{self.stage}: MLflow: .mlflow-outbox/ could not be written "
                  f"({self.outbox.journal_problem}); {self.outbox.unjournaled} record(s) of run "
                  f"{self.run_id} were sent from memory instead"
                  + (f", {lost} of them not sent: lost" if lost else ""), file=sys.stderr, flush=True)
        if status != "FINISHED":  # a failing stage says why in its own line
            return
        if self.outbox.failure is not None:  # the store is full: the stage fails, in one line
            raise StoreFull(self.outbox.uri) from self.outbox.failure
        if left:
            print(f"{self.stage}: MLflow: {self.outbox.uri} did not take {describe(left)} of run "
                  f"{self.run_id} ({self.outbox.problem or 'no answer'}); they wait in "
                  f"{self.outbox.folder.relative_to(repo_root())}/: the next `dvc repro` or "
                  f"`python -m mnistgen.tracking` (same MLFLOW_TRACKING_URI) sends them",
                  file=sys.stderr, flush=True)


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
            with contextlib.suppress(Exception):  # a full disk or store: the stage reports it
                self.outbox.put("metrics", metrics={f"system/{k}": v for k, v in values.items()}, step=step)
            step += 1
