"""Outage-proof delivery of a run's records to MLflow.

Each logging call of a run (metrics, tags, images, files, the model, its end) is first
written to a journal on local disk, `<repo root>/.mlflow-outbox/<run id>/`, then sent in
order by a background thread. While the tracking server is unreachable (a restart, a
network blip) that thread retries with back-off and training goes on; what waits is held
in the journal (an image is a file there, a metric batch a line), not in memory. When the
stage ends it waits up to `tracking.outage_wait` seconds for the rest; whatever still could
not be sent stays in the journal, and the next stage run, `dvc repro` or this command
sends it:

    python -m mnistgen.tracking        # send what an outage held back

The outbox knows how to send plain records (metrics, tags, images, files, the dataset, a
run's end); records of other kinds (a model to log, an alias to move) are sent by the
`handlers` the layer above passes in (mnistgen.tracking.runs.HANDLERS).
"""
from __future__ import annotations

import collections
import contextlib
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from mnistgen.errors import one_line
from mnistgen.tracking.store import store_full

OUTBOX = ".mlflow-outbox"
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
MAX_BATCH_METRICS = 900  # MLflow's log_batch takes at most 1,000 metrics per request
# permanent refusals of one record (a bad value): retrying cannot help, the rest still goes
REFUSED = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")


def folder_of(root: Path, run_id: str) -> Path:
    return Path(root) / OUTBOX / run_id


def _lock(folder: Path):
    from filelock import FileLock

    return FileLock(str(folder) + ".lock")


class Outbox:
    """One run's journal and the thread that sends it; `close()` waits for delivery."""

    def __init__(self, *, root: Path, uri: str, run_id: str, handlers: dict):
        self.uri, self.run_id, self.handlers = uri, run_id, handlers
        self.folder = folder_of(root, run_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.folder)
        self._lock.acquire()  # while this process lives, a flush elsewhere leaves it alone
        (self.folder / "uri").write_text(uri)
        records = _read_journal(self.folder)  # a resumed run may find its unsent tail
        self._sent = _read_sent(self.folder)
        self._pending = collections.deque(records[self._sent:])
        self._journal = open(self.folder / "ops.jsonl", "a", encoding="utf-8")
        self._seq = len(records)
        self._cond = threading.Condition()
        self._deadline: float | None = None  # set by close()
        self.problem: str | None = None  # why the last delivery failed (None: all well)
        self.failure: BaseException | None = None  # the store is full: no use going on
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-outbox", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ what the run writes

    def put(self, op: str, **fields) -> None:
        """Journal one record for sending. A full store is not an outage that passes: its
        error is raised here, in the stage, which then stops with one line."""
        if self.failure is not None:
            raise self.failure
        record = {"op": op, "t": int(time.time() * 1000), **fields}
        with self._cond:
            self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._journal.flush()
            self._pending.append(record)
            self._seq += 1
            self._cond.notify()

    def keep_file(self, source: Path, name: str | None = None) -> str:
        """A copy of `source` in the journal (named `name`, for its artifact's name)."""
        target = self._new_dir() / (name or Path(source).name)
        shutil.copyfile(source, target)
        return target.relative_to(self.folder).as_posix()

    def keep_array(self, array: np.ndarray) -> str:
        target = self._new_dir() / "array.npy"
        np.save(target, array)
        return target.relative_to(self.folder).as_posix()

    def _new_dir(self) -> Path:
        with self._cond:
            while (self.folder / f"f{self._seq}").exists():
                self._seq += 1
            path = self.folder / f"f{self._seq}"
            path.mkdir()
        return path

    # ------------------------------------------------------------ the end

    def close(self, wait_s: float) -> dict | None:
        """Wait up to `wait_s` seconds for everything to be sent. None when it was (the
        journal is removed); else {op: count} of what is still waiting in the journal."""
        with self._cond:
            self._deadline = time.monotonic() + wait_s
            self._cond.notify()
        self._thread.join(timeout=wait_s + 60)  # a send under way ends by its own timeout
        self._journal.close()
        with self._cond:
            left = list(self._pending)
        if left:
            if self.failure is not None:
                self._mark_failed()
            self._lock.release()
            return dict(collections.Counter(r["op"] for r in left))
        _remove(self.folder, self._lock)
        return None

    def _mark_failed(self) -> None:
        """The store is full: whenever the journal is sent, the run ends FAILED, saying why
        (if even this line cannot be written, the next run marks it FAILED all the same)."""
        now = int(time.time() * 1000)
        error = f"the MLflow store ran out of space: {self.problem}"
        with contextlib.suppress(OSError), open(self.folder / "ops.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"op": "tags", "t": now, "tags": {"error": error}}) + "\n")
            f.write(json.dumps({"op": "end", "t": now, "status": "FAILED"}) + "\n")

    # ------------------------------------------------------------ the sender

    def _send_loop(self) -> None:
        from mlflow.tracking import MlflowClient

        client, tries = MlflowClient(self.uri), 0
        while True:
            with self._cond:
                while not self._pending and self._deadline is None:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = _take(self._pending)
            try:
                deliver(client, self.run_id, batch, self.folder, self.handlers)
            except Exception as err:  # noqa: BLE001 - sorted below: refused, full, or an outage
                verdict = _verdict(err)
                if verdict == "full":
                    self.problem, self.failure = one_line(err), err
                    return
                if verdict != "refused":
                    self.problem = one_line(err)
                    if self._past_deadline():
                        return
                    with self._cond:  # back off; close() does not cut a wait short
                        self._cond.wait(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
                    tries += 1
                    continue
                print(f"MLflow refused a {batch[0]['op']} record of run {self.run_id}: {one_line(err)}",
                      file=sys.stderr, flush=True)
            with self._cond:
                for _ in batch:
                    self._pending.popleft()
                self._sent += len(batch)
            (self.folder / "sent").write_text(str(self._sent))
            self.problem, tries = None, 0

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline


def _take(pending: collections.deque) -> list[dict]:
    """The next records to send in one request: a run of metric records, else one record."""
    first = pending[0]
    if first["op"] != "metrics":
        return [first]
    batch, count = [], 0
    for record in pending:
        if record["op"] != "metrics" or record.get("run") != first.get("run") or \
                count + len(record["metrics"]) > MAX_BATCH_METRICS and batch:
            break
        batch.append(record)
        count += len(record["metrics"])
    return batch


def _verdict(err: BaseException) -> str:
    if store_full(err):
        return "full"
    if getattr(err, "error_code", None) in REFUSED:
        return "refused"
    return "outage"


def deliver(client, run_id: str, batch: list[dict], folder: Path, handlers: dict) -> None:
    """Send one batch (see _take) to the store: records of `run_id`, or of the run a
    record names (its pipeline run); other ops by handlers[op](client, run_id, record, folder)."""
    from mlflow.entities import Metric, RunTag

    record = batch[0]
    op, run_id = record["op"], record.get("run") or run_id
    if op == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, float(v), r["t"], r.get("step") or 0)
                                          for r in batch for k, v in r["metrics"].items()])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
    elif op == "delete_tag":
        client.delete_tag(run_id, record["key"])
    elif op == "image":
        client.log_image(run_id, np.load(folder / record["file"]), key=record["key"],
                         step=record["step"], timestamp=record["t"])
    elif op == "picture":
        client.log_image(run_id, np.load(folder / record["file"]), artifact_file=record["name"])
    elif op == "file":
        client.log_artifact(run_id, str(folder / record["file"]), record.get("path"))
    elif op == "dataset":
        client.log_inputs(run_id, datasets=[dataset_input(record)])
    elif op in handlers:
        handlers[op](client, run_id, record, folder)
    elif op == "end":  # on a pipeline run: its duration then spans its stages
        client.set_terminated(run_id, record["status"], end_time=record["t"])
    else:
        raise ValueError(f"unknown outbox record {op!r}")


def dataset_input(record: dict):
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=record["name"], digest=record["digest"], source_type="local",
                      source=json.dumps({"uri": record["path"]}))
    return DatasetInput(dataset=dataset, tags=[InputTag("mlflow.data.context", record["context"])])


# ---------------------------------------------------------------- journals left behind


def _read_journal(folder: Path) -> list[dict]:
    path = folder / "ops.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash: the last one, never sent
            break
    return records


def _read_sent(folder: Path) -> int:
    try:
        return int((folder / "sent").read_text())
    except (OSError, ValueError):
        return 0


def waiting(root: Path) -> dict[str, Path]:
    """{run id: journal folder} of the journals under <root>/.mlflow-outbox."""
    base = Path(root) / OUTBOX
    return {p.name: p for p in sorted(base.iterdir()) if p.is_dir()} if base.is_dir() else {}


def send_waiting(root: Path, uri: str, handlers: dict) -> list[str]:
    """Send every journal left for `uri` by a stage whose process has ended (held back by an
    outage); those of live processes and of other stores are left alone. Returns the run ids
    sent; raises the error of the first one that still cannot be sent."""
    from mlflow.tracking import MlflowClient

    sent = []
    for run_id, folder in waiting(root).items():
        if (folder / "uri").is_file() and (folder / "uri").read_text() != uri:
            continue
        lock = _lock(folder)
        try:
            lock.acquire(timeout=0)
        except TimeoutError:  # a live process owns it (filelock's Timeout is a TimeoutError)
            continue
        try:
            records, done = _read_journal(folder), _read_sent(folder)
            ends = [r["status"] for r in records if r["op"] == "end" and not r.get("run")]
            failed = bool(ends) and ends[-1] != "FINISHED"
            client = MlflowClient(uri)
            while done < len(records):
                batch = _take(collections.deque(records[done:]))
                if failed and batch[0].get("if_finished"):  # its stage failed: not an output
                    done += 1
                    continue
                try:
                    deliver(client, run_id, batch, folder, handlers)
                except Exception as err:  # noqa: BLE001 - a refused record is skipped, as live
                    if _verdict(err) != "refused":
                        raise
                done += len(batch)
                (folder / "sent").write_text(str(done))
        except BaseException:
            lock.release()
            raise
        _remove(folder, lock)
        sent.append(run_id)
    return sent


def _remove(folder: Path, lock) -> None:
    """A journal sent in full: its folder, then its lock file."""
    shutil.rmtree(folder, ignore_errors=True)
    lock.release()
    Path(lock.lock_file).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the last journal: no empty folder stays behind
        folder.parent.rmdir()
