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
    (KeyboardInterrupt(), 130, "sample: interrupted; earlier outputs are unchanged"),
    (Interrupted("interrupted at step 7/10; rerun"), 130, "sample: interrupted at step 7/10; rerun"),
])
def test_stage_runner_turns_machine_faults_into_one_line(capsys, error, code, phrase):
    def body(argv):
        raise error

    assert run("sample", body) == code
    captured = capsys.readouterr()
    assert captured.err.strip() == phrase or captured.err.startswith(phrase)
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_other_os_errors_are_not_hidden():
    def body(argv):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        run("sample", body)
