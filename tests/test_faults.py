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
