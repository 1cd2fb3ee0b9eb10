"""Faults a user hits outside the pipeline's control: a full disk, Ctrl-C (unit level; the
end-to-end cases are in test_stage_runs.py)."""
import errno
import os

import pytest

from mnistgen import runtime
from mnistgen.stage import Interrupted, run


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_fills_the_disk_leaves_no_temp_file_and_the_old_file_intact(tmp_path, monkeypatch):
    out = tmp_path / "samples.npz"
    out.write_bytes(b"last good output")
    monkeypatch.setattr(os, "fsync", full_disk)  # the write reaches the disk's limit
    with pytest.raises(OSError):
        runtime.atomic_write_bytes(out, b"x" * 100_000)
    assert out.read_bytes() == b"last good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]


def test_a_failing_staged_folder_is_removed_and_the_old_one_kept(tmp_path):
    final = tmp_path / "samples"
    final.mkdir()
    (final / "gan.npz").write_bytes(b"old")
    with pytest.raises(OSError):
        with runtime.staged(final) as staging:
            (staging / "gan.npz").write_bytes(b"new, half written")
            full_disk()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
    assert (final / "gan.npz").read_bytes() == b"old"
    with runtime.staged(final) as staging:  # and a good run still swaps in
        (staging / "gan.npz").write_bytes(b"new")
    assert (final / "gan.npz").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]


@pytest.mark.parametrize("error, code, phrase", [
    (OSError(errno.ENOSPC, "No space left on device", "samples/gan.npz"), 1,
     "sample: error: cannot write samples/gan.npz: No space left on device; free space"),
    (OSError(errno.EROFS, "Read-only file system", "models/gan.pt"), 1,
     "sample: error: cannot write models/gan.pt: Read-only file system"),
    (KeyboardInterrupt(), 130, "sample: interrupted; rerun to start again (earlier outputs are unchanged)"),
    (Interrupted("interrupted at step 7/10; rerun"), 130, "sample: interrupted at step 7/10; rerun"),
])
def test_stage_runner_turns_machine_faults_into_one_line(capsys, monkeypatch, error, code, phrase):
    monkeypatch.delenv("DVC_STAGE", raising=False)

    def body(argv):
        raise error

    assert run("sample", body) == code
    captured = capsys.readouterr()
    assert captured.err.strip() == phrase or captured.err.startswith(phrase)
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""


@pytest.mark.parametrize("dvc_stage, removes, note", [
    ("train_gan", True, "(`dvc checkout train_gan` restores its last good outputs from DVC's cache)"),
    (None, True, "(earlier outputs are unchanged)"),  # run by hand: nothing was removed
    ("check_params", False, "(earlier outputs are unchanged)"),  # a `persist` output
])
def test_a_failure_under_dvc_says_how_to_get_the_removed_outputs_back(capsys, monkeypatch,
                                                                       dvc_stage, removes, note):
    from mnistgen.params import ParamsError

    if dvc_stage:
        monkeypatch.setenv("DVC_STAGE", dvc_stage)
    else:
        monkeypatch.delenv("DVC_STAGE", raising=False)
    stage = dvc_stage or "train_gan"

    def body(argv):
        raise ParamsError("train_gan.batch_size 64 is larger than the 10 training images")

    assert run(stage, body, dvc_removes_outputs=removes) == 1
    assert capsys.readouterr().err == f"{stage}: error: train_gan.batch_size 64 is larger than the 10 training images {note}\n"


def test_other_os_errors_are_not_hidden():
    def body(argv):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        run("sample", body)


def test_a_full_mlflow_store_is_one_line_not_a_chain_of_tracebacks(capsys, monkeypatch):
    """What MLflow raises when SQLite's disk is full: an MlflowException over SQLAlchemy's
    OperationalError over sqlite3's (here built the same way, no disk filled), inside the
    recording layer, which hands the stage runner one of the project's errors."""
    import sqlite3

    from mlflow.exceptions import MlflowException

    from mnistgen.tracking import store

    monkeypatch.delenv("DVC_STAGE", raising=False)

    def body(argv):
        with store.one_line_errors("sqlite:///mlflow.db", "opening a run"):
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as inner:
                raise MlflowException("(sqlite3.OperationalError) database or disk is full") from inner

    assert run("train_gan", body) == 1
    err = capsys.readouterr().err
    assert err.startswith("train_gan: error: the MLflow store's disk is full")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_runs_whose_process_died_are_marked_failed_on_the_next_start(tmp_path, monkeypatch):
    """A kill -9, or a store too full to record the end, leaves a run RUNNING forever; the
    next run in that experiment marks it FAILED with the reason. A live process's run (a
    parallel experiment) and another machine's are left alone."""
    import os

    from mlflow.tracking import MlflowClient

    from mnistgen.tracking import store

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("draw-mnist/train_gan")
    me = store.process_tags()
    dead = client.create_run(exp, tags={**me, "mnistgen.pid_started": "1.00"}).info.run_id  # pid reused
    alive = client.create_run(exp, tags=me).info.run_id
    elsewhere = client.create_run(exp, tags={**me, "mnistgen.host": "another-machine",
                                             "mnistgen.pid_started": "1.00"}).info.run_id
    assert store.close_orphaned_runs(client, exp) == [dead]
    assert client.get_run(dead).info.status == "FAILED"
    assert "ended without closing the run" in client.get_run(dead).data.tags["error"]
    assert {client.get_run(r).info.status for r in (alive, elsewhere)} == {"RUNNING"}
    assert os.getpid() == int(me["mnistgen.pid"])


def test_a_copied_repository_writes_artifacts_into_its_own_mlruns(tmp_path, monkeypatch):
    """mlflow.db stores absolute artifact folders; after `cp -r` the copy's runs would log
    into the original's mlruns/. reroot_artifacts points them at the copy's own."""
    import shutil

    from mlflow.tracking import MlflowClient

    from mnistgen.tracking import store

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    monkeypatch.chdir(original)  # MLflow puts artifacts under ./mlruns of the working directory
    client = MlflowClient(f"sqlite:///{original / 'mlflow.db'}")
    exp = client.create_experiment("draw-mnist/train_gan")
    run_id = client.create_run(exp).info.run_id
    (original / "a.txt").write_text("first")
    client.log_artifact(run_id, str(original / "a.txt"))
    shutil.copytree(original, copy)
    before = sorted(p.relative_to(original) for p in (original / "mlruns").rglob("*"))

    assert store.reroot_artifacts(copy / "mlflow.db", copy) == str(original)
    assert store.reroot_artifacts(copy / "mlflow.db", copy) is None  # once is enough
    monkeypatch.chdir(copy)
    from mlflow.tracking._tracking_service import utils
    utils._artifact_repos_cache.clear()  # per process: a new stage process starts without it
    copied = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    assert copied.get_experiment(exp).artifact_location == str(copy / "mlruns" / exp)
    (copy / "b.txt").write_text("second")
    copied.log_artifact(run_id, str(copy / "b.txt"))
    assert sorted(p.relative_to(original) for p in (original / "mlruns").rglob("*")) == before
    assert [a.path for a in copied.list_artifacts(run_id)] == ["a.txt", "b.txt"]
    assert list((copy / "mlruns").rglob("b.txt"))


def test_a_resume_file_for_other_params_is_removed_when_training_starts_over(tmp_path, capsys):
    """It would otherwise sit there (17 MB at the defaults) until the new run wrote its own."""
    import torch

    from conftest import make_params
    from mnistgen.gan import GanState, try_resume

    small = dict(g_hidden=[8, 4], d_hidden=[4, 8, 8], latent_dim=4, device="cpu")
    old = GanState(make_params("train_gan", **small), torch.device("cpu"))
    resume = tmp_path / "train_gan.pt"
    old.save(resume, digest="params of an earlier run")
    fresh = GanState(make_params("train_gan", **small), torch.device("cpu"))
    assert try_resume(fresh, resume, digest="these params") is False
    assert not resume.exists() and fresh.step == 0
    assert "resume file is for other params: removed; starting over" in capsys.readouterr().err


def test_sigterm_outside_a_training_loop_is_one_line_and_exit_143(capsys, monkeypatch):
    """SIGTERM (a CI cancel, `timeout`, `kill`) used to end a stage on the spot with no word
    and its run left RUNNING; now it stops as Ctrl-C does (the run ends KILLED: start_run
    treats the KeyboardInterrupt so), and the handler before is back afterwards."""
    import os
    import signal
    import time

    monkeypatch.delenv("DVC_STAGE", raising=False)
    before = signal.getsignal(signal.SIGTERM)

    def body(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the signal arrives first

    assert run("evaluate", body) == 143
    err = capsys.readouterr().err
    assert err == "evaluate: terminated (SIGTERM); rerun to start again (earlier outputs are unchanged)\n"
    assert signal.getsignal(signal.SIGTERM) is before
