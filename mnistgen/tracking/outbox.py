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

Faults it survives: a record the store refuses (skipped, in one line); a record the journal
holds damaged (a line cut short or garbled, an image or file truncated: skipped by name,
the rest delivered, the run tagged with what was lost); a journal that cannot be written
(a full disk under .mlflow-outbox/: records are sent from memory and the stage says so in
one line, training goes on); a resend after a crash (every record is idempotent: the store
keeps one of each). An old journal never stops a stage: what cannot be sent stays for the
next try.

The outbox knows how to send plain records (metrics, tags, images, files, the dataset, a
run's end); records of other kinds (a model to log, scores, an alias to move) are sent by
the `handlers` the layer above passes in (mnistgen.tracking.recorder.HANDLERS).
"""
from __future__ import annotations

import collections
import contextlib
import json
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from mnistgen.errors import one_line
from mnistgen.tracking.names import JOURNAL_TAG
from mnistgen.tracking.store import store_full

OUTBOX = ".mlflow-outbox"
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
MAX_BATCH_METRICS = 900  # MLflow's log_batch takes at most 1,000 metrics per request
# permanent refusals of one record (a bad value): retrying cannot help, the rest still goes
REFUSED = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")


class DamagedRecord(Exception):
    """A journal record that cannot be read back (garbled, or its file cut short)."""


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
        self.problem: str | None = None  # why the last delivery failed (None: all well)
        self.failure: BaseException | None = None  # the store is full: no use going on
        self.journal_problem: str | None = None  # why the journal could not be written
        self.unjournaled = 0  # records held only in memory (the journal could not take them)
        self.damaged: list[str] = []  # records of the journal that could not be read back
        self._lock = _lock(self.folder)
        self._journal, records, self._sent = None, [], 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()  # while this process lives, a flush elsewhere leaves it alone
            (self.folder / "uri").write_text(uri)
            records = read_journal(self.folder)  # a resumed run may find its unsent tail
            self._sent = _read_sent(self.folder)
            self._journal = _open_for_append(self.folder / "ops.jsonl")
        except OSError as err:  # a full or read-only disk: send from memory, say so at the end
            self.journal_problem = one_line(err)
        self._pending = collections.deque(records[self._sent:])
        self._seq = len(records)
        self._cond = threading.Condition()
        self._deadline: float | None = None  # set by close()
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-outbox", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ what the run writes

    def put(self, op: str, *, array: np.ndarray | None = None, source: Path | None = None,
            **fields) -> None:
        """Journal one record for sending: `array` (an image) and `source` (a file) are kept
        in the journal beside it. A full store is not an outage that passes: its error is
        raised here, in the stage, which then stops with one line. A journal that cannot be
        written is: the record is sent from memory."""
        if self.failure is not None:
            raise self.failure
        record = {"op": op, "t": int(time.time() * 1000), **fields}
        with self._cond:
            seq = self._seq
            self._seq += 1
        try:
            journaled = self._write(seq, record, array, source)
        except OSError as err:  # numpy's short write carries no errno: any OSError counts
            self.journal_problem, journaled = one_line(err), dict(record)
            self.unjournaled += 1
            journaled["memory"] = {"array": array, "source": source}
        with self._cond:
            self._pending.append(journaled)
            self._cond.notify()

    def _write(self, seq: int, record: dict, array, source) -> dict:
        """The record as the journal holds it (its file beside it), written; OSError if not."""
        if self._journal is None:
            raise OSError(self.journal_problem or "the journal could not be opened")
        record = dict(record)
        if array is not None or source is not None:
            folder = self.folder / f"f{seq}"
            folder.mkdir(exist_ok=True)
            target = folder / ("array.npy" if array is not None else Path(source).name)
            if array is not None:
                np.save(target, array)
            else:
                shutil.copyfile(source, target)
            record["file"] = target.relative_to(self.folder).as_posix()
        self._journal.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._journal.flush()
        return record

    # ------------------------------------------------------------ the end

    def close(self, wait_s: float) -> dict | None:
        """Wait up to `wait_s` seconds for everything to be sent. None when it was (the
        journal is removed); else {op: count} of what is still waiting in the journal."""
        with self._cond:
            self._deadline = time.monotonic() + wait_s
            self._cond.notify()
        self._thread.join(timeout=wait_s + 60)  # a send under way ends by its own timeout
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close()
        with self._cond:
            left = list(self._pending)
        if left:
            if self.failure is not None:
                self._mark_failed()
            self._release()
            return dict(collections.Counter(r["op"] for r in left))
        _remove(self.folder, self._lock)
        return None

    def lost(self) -> int:
        """Records held only in memory that were not sent: gone with this process."""
        with self._cond:
            return sum(1 for r in self._pending if "memory" in r)

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._lock.release()

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
                    self._tag_damaged(client)
                    return
                batch = _take(self._pending)
            try:
                deliver(client, self.run_id, batch, self.folder, self.handlers)
            except Exception as err:  # noqa: BLE001 - sorted below: refused, damaged, full, outage
                verdict = _verdict(err)
                if verdict == "full":
                    self.problem, self.failure = one_line(err), err
                    return
                if verdict == "outage":
                    self.problem = one_line(err)
                    if self._past_deadline():
                        return
                    with self._cond:  # back off; close() does not cut a wait short
                        self._cond.wait(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
                    tries += 1
                    continue
                self._skipped(batch[0], verdict, err)
            with self._cond:
                for _ in batch:
                    self._pending.popleft()
                self._sent += sum(1 for r in batch if "memory" not in r)
            with contextlib.suppress(OSError):  # a full disk: a resend later is harmless
                (self.folder / "sent").write_text(str(self._sent))
            self.problem, tries = None, 0

    def _skipped(self, record: dict, verdict: str, err: BaseException) -> None:
        if verdict == "damaged":
            self.damaged.append(str(err))
            print(f"MLflow: run {self.run_id}: {err}: skipped", file=sys.stderr, flush=True)
        else:
            print(f"MLflow refused a {record['op']} record of run {self.run_id}: {one_line(err)}",
                  file=sys.stderr, flush=True)

    def _tag_damaged(self, client) -> None:
        if self.damaged:
            with contextlib.suppress(Exception):
                tag_damaged(client, self.run_id, self.damaged)

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
    if isinstance(err, DamagedRecord):
        return "damaged"
    if getattr(err, "error_code", None) in REFUSED:
        return "refused"
    return "outage"


def tag_damaged(client, run_id: str, damaged: list[str]) -> None:
    """Say on the run what its journal lost: the UI shows it next to the curves."""
    from mlflow.entities import RunTag

    text = f"{len(damaged)} damaged journal record(s) skipped: " + "; ".join(damaged)
    client.log_batch(run_id, tags=[RunTag(JOURNAL_TAG, text[:5000])])


def deliver(client, run_id: str, batch: list[dict], folder: Path, handlers: dict) -> None:
    """Send one batch (see _take) to the store: records of `run_id`, or of the run a
    record names (its pipeline run); other ops by handlers[op](client, run_id, record, path),
    `path` the record's file (or None). A record that cannot be read back raises
    DamagedRecord naming it."""
    from mlflow.entities import Metric, RunTag

    record = batch[0]
    op, run_id = record["op"], record.get("run") or run_id
    if op == "damaged":
        raise DamagedRecord(f"journal line {record['line']} is not a record ({record['text']!r})")
    if op == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, float(v), r["t"], r.get("step") or 0)
                                          for r in batch for k, v in r["metrics"].items()])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()])
    elif op == "delete_tag":
        client.delete_tag(run_id, record["key"])
    elif op == "image":
        log_image_step(client, run_id, record_array(record, folder), key=record["key"],
                       step=record["step"], timestamp=record["t"])
    elif op == "picture":
        client.log_image(run_id, record_array(record, folder), artifact_file=record["name"])
    elif op == "file":
        client.log_artifact(run_id, str(record_path(record, folder)), record.get("path"))
    elif op == "dataset":
        client.log_inputs(run_id, datasets=[dataset_input(record)])
    elif op in handlers:
        path = record_path(record, folder) if ("file" in record or "memory" in record) else None
        handlers[op](client, run_id, record, path)
    elif op == "end":  # on a pipeline run: its duration then spans its stages
        client.set_terminated(run_id, record["status"], end_time=record["t"])
    else:
        raise DamagedRecord(f"journal record of unknown kind {op!r}")


def record_path(record: dict, folder: Path) -> Path:
    """The file a record keeps: in the journal, or (a journal that could not be written)
    where it was."""
    memory = record.get("memory")
    path = Path(memory["source"]) if memory else Path(folder) / record["file"]
    if not path.is_file():
        raise DamagedRecord(f"{record['op']} record: its file {path.name} is missing")
    return path


def record_array(record: dict, folder: Path) -> np.ndarray:
    memory = record.get("memory")
    if memory:
        return memory["array"]
    try:
        return np.load(Path(folder) / record["file"], allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DamagedRecord(f"{record['op']} record: {record['file']} cannot be read "
                            f"({one_line(err, 80)})") from err


def log_image_step(client, run_id: str, image: np.ndarray, *, key: str, step: int, timestamp: int):
    """MLflow's log_image(key=, step=), with the file name fixed by the record (MLflow puts a
    random uuid in it): a resend overwrites the same files, so the store keeps one image per
    step. The names follow MLflow 3.17's layout, which its UI's image chart reads."""
    import tempfile

    from mlflow.tracking.multimedia import compress_image_size, convert_to_pil_image
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES

    picture = convert_to_pil_image(image)
    token = uuid.uuid5(uuid.NAMESPACE_URL, f"mnistgen:{run_id}/{key}/{step}/{timestamp}")
    stem = f"{key.replace('/', '~')}+step+{step}+timestamp+{timestamp}+{token}"
    with tempfile.TemporaryDirectory() as tmp:
        picture.save(Path(tmp) / f"{stem}.png")
        compress_image_size(picture).save(Path(tmp) / f"{stem}+compressed.webp")
        client.log_artifacts(run_id, tmp, "images")
    client.set_tag(run_id, MLFLOW_LOGGED_IMAGES, True)


def dataset_input(record: dict):
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=record["name"], digest=record["digest"], source_type="local",
                      source=json.dumps({"uri": record["path"]}))
    return DatasetInput(dataset=dataset, tags=[InputTag("mlflow.data.context", record["context"])])


# ---------------------------------------------------------------- journals left behind


def read_journal(folder: Path) -> list[dict]:
    """The journal's records in order; a line that is not a record (cut short by a crash,
    garbled by a disk) stands as a `damaged` record in its place, so every other record
    keeps its position (what the `sent` count refers to)."""
    path = folder / "ops.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "op" not in record:
                raise ValueError("not a record")
        except ValueError:
            record = {"op": "damaged", "line": number, "text": line[:40]}
        records.append(record)
    return records


def _open_for_append(path: Path):
    """The journal, opened to add records after what it holds; a last line cut short by a
    crash is ended first, so the next record starts a line of its own."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            cut = f.read(1) != b"\n"
        if cut:
            with open(path, "ab") as f:
                f.write(b"\n")
    return open(path, "a", encoding="utf-8")


def _read_sent(folder: Path) -> int:
    try:
        return max(0, int((folder / "sent").read_text()))
    except (OSError, ValueError):
        return 0  # a damaged count: everything is sent again, which the store takes once


def waiting(root: Path) -> dict[str, Path]:
    """{run id: journal folder} of the journals under <root>/.mlflow-outbox."""
    base = Path(root) / OUTBOX
    return {p.name: p for p in sorted(base.iterdir()) if p.is_dir()} if base.is_dir() else {}


def send_waiting(root: Path, uri: str, handlers: dict) -> tuple[list[str], list[str]]:
    """Send every journal left for `uri` by a stage whose process has ended (held back by an
    outage); those of live processes and of other stores are left alone. A damaged record
    is skipped (named on stderr and on its run); a store that cannot take a journal now
    leaves it for the next try. Only a full store raises. -> (run ids sent, one line per
    journal left waiting)."""
    from mlflow.tracking import MlflowClient

    sent, left = [], []
    for run_id, folder in waiting(root).items():
        if (folder / "uri").is_file() and (folder / "uri").read_text() != uri:
            continue
        lock = _lock(folder)
        try:
            lock.acquire(timeout=0)
        except TimeoutError:  # a live process owns it (filelock's Timeout is a TimeoutError)
            continue
        try:
            problem = _send_journal(MlflowClient(uri), run_id, folder, handlers)
        except BaseException:
            lock.release()
            raise
        if problem is None:
            _remove(folder, lock)
            sent.append(run_id)
        else:
            lock.release()
            left.append(f"{folder.name}: {problem}")
    return sent, left


def _send_journal(client, run_id: str, folder: Path, handlers: dict) -> str | None:
    """One journal from where its `sent` count says. -> None when all of it went, else why
    the rest waits (an outage). A full store raises."""
    records, done = read_journal(folder), _read_sent(folder)
    ends = [r["status"] for r in records if r["op"] == "end" and not r.get("run")]
    failed = bool(ends) and ends[-1] != "FINISHED"
    damaged = []
    while done < len(records):
        batch = _take(collections.deque(records[done:]))
        if failed and batch[0].get("if_finished"):  # its stage failed: not an output
            done += 1
            continue
        try:
            deliver(client, run_id, batch, folder, handlers)
        except Exception as err:  # noqa: BLE001 - sorted as the live sender sorts them
            verdict = _verdict(err)
            if verdict == "full":
                raise
            if verdict == "outage":
                return one_line(err)
            if verdict == "damaged":
                damaged.append(str(err))
                print(f"MLflow: run {run_id}: {err}: skipped", file=sys.stderr, flush=True)
        done += len(batch)
        with contextlib.suppress(OSError):
            (folder / "sent").write_text(str(done))
    if damaged:
        tag_damaged(client, run_id, damaged)
    return None


def _remove(folder: Path, lock) -> None:
    """A journal sent in full: its folder, then its lock file."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(Exception):
        lock.release()
    Path(lock.lock_file).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the last journal: no empty folder stays behind
        folder.parent.rmdir()
