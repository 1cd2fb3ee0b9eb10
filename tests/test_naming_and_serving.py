"""Run names, the served model's request format, `device: auto` on Apple's MPS, and the
`python -m mnistgen.draw` command."""
import os
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from mnistgen.tracking import naming
from mnistgen.params import ParamsError
from mnistgen.runtime import pick_device
from mnistgen.tracking.serving import requests

GAN_CONFIG = {"arch": "conv", "latent_dim": 8, "g_hidden": [8, 8, 4], "d_hidden": [8, 8, 8],
              "spectral_norm": False, "conditional_bn": False}
BASE = {"lr_g": 0.0004, "lr_d": 0.0004, "g_hidden": [64, 32, 16], "seed": 0}


def test_run_names_say_what_changed_and_differ_when_params_differ():
    changed = {**BASE, "lr_g": 0.0003}
    name = naming.run_name("train_gan", params=changed, baseline=BASE, experiment="bushy-kiln")
    assert name == f"train_gan [bushy-kiln] lr_g=0.0003 #{naming.digest(changed)}"
    assert naming.run_name("train_gan", params=BASE, baseline=BASE) == f"train_gan #{naming.digest(BASE)}"
    assert naming.digest(changed) != naming.digest(BASE)
    assert naming.run_name("train_inverted", params=BASE, baseline=None, variant="sigmoid").startswith(
        "train_inverted:sigmoid #")
    many = {**BASE, "lr_g": 1, "lr_d": 2, "g_hidden": [8], "seed": 3}
    assert " +1 more #" in naming.run_name("train_gan", params=many, baseline=BASE)
    assert "g_hidden=[8]" in naming.run_name("train_gan", params=many, baseline=BASE)
    # nested sections (a parent run's whole params.yaml): dotted keys
    assert naming.changes({"train_gan": changed}, {"train_gan": BASE}) == ["train_gan.lr_g=0.0003"]


def test_committed_params_reads_head_or_gives_none(tmp_path):
    assert naming.committed_params(tmp_path) is None  # not a git repository
    run = lambda *a: subprocess.run(a, cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    (tmp_path / "params.yaml").write_text("train_gan:\n  lr_g: 0.0004\n")
    run("git", "add", "params.yaml")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p")
    (tmp_path / "params.yaml").write_text("train_gan:\n  lr_g: 0.0003\n")  # an uncommitted edit
    assert naming.committed_params(tmp_path) == {"train_gan": {"lr_g": 0.0004}}


def test_requests_take_digit_with_optional_count_and_seed():
    frame = pd.DataFrame([{"digit": 7, "count": 16, "seed": 3}, {"digit": 1}])
    assert requests(frame) == [(7, 16, 3), (1, 1, 0)]
    # a column with gaps is float in pandas: 3.0 is a whole number
    assert requests(pd.DataFrame([{"digit": 7.0, "count": 3.0}])) == [(7, 3, 0)]
    for bad, word in [({"digit": 10}, "digit"), ({"digit": 2.5}, "digit"), ({"digit": 3, "count": 0}, "count"),
                      ({"digit": 3, "count": 5000}, "count"), ({"digit": 3, "seed": -1}, "seed"),
                      ({"digit": 3, "seed": 2**31}, "seed")]:
        with pytest.raises(ValueError, match=f"row 0: {word} must be a whole number"):
            requests(pd.DataFrame([bad]))
    with pytest.raises(ValueError, match="each row needs a 'digit'"):
        requests(pd.DataFrame([{"count": 2}]))


@pytest.mark.parametrize("key", ["digit", "count", "seed"])
@pytest.mark.parametrize("value", ["3", True])
def test_one_rule_for_all_three_columns_strings_and_booleans_are_refused(key, value):
    row = {"digit": 3, key: value}
    with pytest.raises(ValueError, match=f"row 0: {key} must be a whole number"):
        requests(pd.DataFrame([row]))


def test_a_request_is_capped_in_total_not_only_per_row():
    """500 rows of 1,000 held a server for 321 s and 1.7 GB: at most 10,000 a request."""
    assert len(requests(pd.DataFrame([{"digit": 1, "count": 1000}] * 10))) == 10
    with pytest.raises(ValueError, match="asks for 10,001 digits; at most 10,000 per request"):
        requests(pd.DataFrame([{"digit": 1, "count": 1000}] * 10 + [{"digit": 2}]))


def test_queued_experiments_name_their_parent_run_after_dvc_exp_run():
    """DVC's queue runs `dvc exp exec-run`; the user typed `dvc exp run`."""
    assert naming_of(["/v/bin/python", "/v/bin/dvc", "exp", "exec-run", "--infofile", "x"]) == "dvc exp run"
    assert naming_of(["python", "-m", "dvc", "repro", "-f"]) == "dvc repro"
    assert naming_of(["/bin/sh", "-c", "python -m stages.train_gan"]) is None


def naming_of(cmdline):
    from mnistgen.tracking.runs import dvc_command

    return dvc_command(cmdline)


def test_auto_device_picks_mps_when_present_and_cuda_first(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto").type == "mps"
    assert pick_device("mps").type == "mps" and pick_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(ParamsError, match="MPS is not available"):
        pick_device("mps")


def test_draw_command_writes_one_row_per_digit(tmp_path):
    from PIL import Image

    from mnistgen.models import GanConfig, Generator
    from mnistgen.runtime import save_checkpoint

    G = Generator(GanConfig(**GAN_CONFIG))
    ckpt = tmp_path / "gan.pt"
    save_checkpoint(ckpt, kind="gan", models={"generator": G}, config=GAN_CONFIG)
    out = tmp_path / "digits.png"
    for extra in ([], ["--interpolate"]):
        result = subprocess.run([sys.executable, "-m", "mnistgen.draw", "7", "3", "--count", "5",
                                 "--model", str(ckpt), "--out", str(out), *extra],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        width, height = Image.open(out).size
        assert (width, height) == (2 * (5 * 30 + 2), 2 * (2 * 30 + 2))  # 2 rows x 5, scale 2
    bad = subprocess.run([sys.executable, "-m", "mnistgen.draw", "12", "--model", str(ckpt)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "a digit is 0-9, got '12'" in bad.stderr


def test_draw_writes_through_a_link_and_never_replaces_it(tmp_path):
    """Like `cp` and `curl -o`: an --out that is a symbolic link gets the picture in the file
    it names; the link stays a link (it used to be replaced by a regular file)."""
    from PIL import Image

    from mnistgen.models import GanConfig, Generator
    from mnistgen.runtime import save_checkpoint

    ckpt = tmp_path / "gan.pt"
    save_checkpoint(ckpt, kind="gan", models={"generator": Generator(GanConfig(**GAN_CONFIG))},
                    config=GAN_CONFIG)
    (tmp_path / "pictures").mkdir()
    target = tmp_path / "pictures" / "latest.png"
    target.write_bytes(b"an older picture")
    link = tmp_path / "digits.png"
    link.symlink_to(target)
    result = subprocess.run([sys.executable, "-m", "mnistgen.draw", "7", "--count", "2",
                             "--model", str(ckpt), "--out", str(link)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and link.resolve() == target
    assert Image.open(target).size == (2 * (2 * 30 + 2), 2 * (30 + 2))


@pytest.mark.parametrize("args, code, phrase", [
    (["--out", "{tmp}/no/such/dir/x.png"], 1, "folder {tmp}/no/such/dir does not exist (draw creates no folders)"),
    (["--out", "/proc/nope/x.png"], 1, "folder /proc/nope does not exist"),
    (["--out", "{tmp}"], 1, "is a folder; name a .png file in it"),
    (["--out", "{tmp}/fifo"], 1, "is not a regular file (a device, pipe or socket)"),  # never replaced
    (["--seed", "99999999999999999999"], 2, "seed is a whole number 0-2147483647"),
    (["--seed", "-1"], 2, "seed is a whole number 0-2147483647, got '-1'"),
    (["--count", "1001"], 2, "count is a whole number 1-1000"),
    (["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "--count", "1000"], 2,
     "12 digits x 1000 is more than 10,000 images"),
])
def test_draw_mistakes_are_one_line_and_create_no_folder(tmp_path, capsys, args, code, phrase):
    """The same seed and size rules as the served model; like `curl -o`, no folder made.
    (`python -m mnistgen.draw` runs exactly this: run("draw", main, command=True).)"""
    from mnistgen.draw import main
    from mnistgen.stage import run

    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    os.mkfifo(tmp_path / "fifo")  # what a device node is to draw, made without root
    try:
        returned = run("draw", main, ["7", *args, "--model", str(tmp_path / "never-read.pt")], command=True)
    except SystemExit as exit_:  # argparse's way out
        returned = exit_.code
    captured = capsys.readouterr()
    assert returned == code, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert phrase.replace("{tmp}", str(tmp_path)) in captured.err
    assert not (tmp_path / "no").exists() and captured.out == ""
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)


def test_interpolation_ends_at_two_noise_samples():
    from mnistgen.draw import slerp

    a, b = torch.randn(16), torch.randn(16)
    path = slerp(a, b, 7)
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    assert np.isfinite(path.numpy()).all() and path.shape == (7, 16)
