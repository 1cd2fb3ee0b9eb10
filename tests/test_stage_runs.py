"""Stage scripts run directly against a trained shrunken project: faults and bad input
(each must fail with a clear message, a non-zero exit, and leave earlier outputs and MLflow
runs as they were), kill -9 and resume, and data-parallel training under torchrun."""
import http.server
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import yaml

from conftest import copy_repo, dvc, env_for, stage_runs
from mnistgen.tracking import store

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def pipeline_repo(built_pipeline, tmp_path_factory):
    """A copy of the built pipeline that these tests run stage scripts in."""
    return copy_repo(built_pipeline, tmp_path_factory.mktemp("stage_runs") / "repo")


GAN_OUTS = ["--model", "models/gan.pt", "--losses", "plots/gan_losses.csv",
            "--quality", "plots/gan_quality.csv", "--resume", ".resume/train_gan.pt"]


def stage(repo, module, *args, env=None, params="params.yaml"):
    cmd = [sys.executable, "-m", f"stages.{module}", "--params", params, *args]
    return subprocess.run(cmd, cwd=repo, env={**env_for(repo), **(env or {})},
                          capture_output=True, text=True)


def train_gan(repo, params="params.yaml", env=None):
    return stage(repo, "train_gan", "--data", "data/mnist.npz", "--judge", "models/judge.pt",
                 *GAN_OUTS, params=params, env=env)


def snapshot(repo):
    """Bytes of every output and the count of MLflow runs."""
    files = {p: (repo / p).read_bytes() for p in ["models/gan.pt", "models/judge.pt",
                                                  "plots/gan_losses.csv", "metrics/evaluate.json"]}
    with sqlite3.connect(repo / "mlflow.db") as con:
        runs = con.execute("select run_uuid, status from runs order by run_uuid").fetchall()
    return files, runs


def gan_params(repo, **changes):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train_gan"].update(changes)
    path = repo / "fault_params.yaml"
    with open(path, "w") as f:
        yaml.safe_dump(params, f)
    return path.name


def assert_failed_cleanly(result, repo, before, *phrases):
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    for phrase in phrases:
        assert phrase in output, output
    files, runs = snapshot(repo)
    assert files == before[0]
    # earlier runs are untouched; a run that training had opened is marked FAILED, not lost
    assert set(before[1]) <= set(runs)
    assert all(status == "FAILED" for _, status in set(runs) - set(before[1]))


def test_batch_larger_than_the_data(pipeline_repo):
    before = snapshot(pipeline_repo)
    result = train_gan(pipeline_repo, gan_params(pipeline_repo, train_limit=50, batch_size=64))
    assert_failed_cleanly(result, pipeline_repo, before,
                          "train_gan.batch_size 64 is larger than the 50 training images")


def test_mistyped_param(pipeline_repo):
    before = snapshot(pipeline_repo)
    result = train_gan(pipeline_repo, gan_params(pipeline_repo, epochs="many"))
    assert_failed_cleanly(result, pipeline_repo, before, "train_gan.epochs: expected an integer")


def test_corrupt_data_file(pipeline_repo, tmp_path):
    before = snapshot(pipeline_repo)
    bad = tmp_path / "mnist.npz"
    bad.write_bytes((pipeline_repo / "data/mnist.npz").read_bytes()[:5000])
    result = stage(pipeline_repo, "train_judge", "--data", str(bad), "--model", "models/judge.pt",
                   "--metrics", "metrics/judge.json")
    assert_failed_cleanly(result, pipeline_repo, before, "corrupt or truncated")


def test_truncated_checkpoint(pipeline_repo, tmp_path):
    before = snapshot(pipeline_repo)
    bad = tmp_path / "judge.pt"
    bad.write_bytes((pipeline_repo / "models/judge.pt").read_bytes()[:3000])
    result = stage(pipeline_repo, "train_gan", "--data", "data/mnist.npz", "--judge", str(bad),
                   *GAN_OUTS)
    assert_failed_cleanly(result, pipeline_repo, before, "corrupt or truncated checkpoint")


def test_unreachable_tracking_server_is_reported_before_training(pipeline_repo):
    before = snapshot(pipeline_repo)
    result = train_gan(pipeline_repo, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert_failed_cleanly(result, pipeline_repo, before, "http://127.0.0.1:9 is unreachable")
    # no training happened first: no progress line, no resume file, no journal
    assert "train_gan: step" not in result.stdout
    assert not (pipeline_repo / ".resume/train_gan.pt").exists()
    assert not (pipeline_repo / ".mlflow-outbox").exists()


def test_tracking_server_that_answers_but_fails_is_reported_in_one_line(pipeline_repo):
    """A listener on the port (a server whose database is gone answers 503) passes the
    reachability check; opening the run fails, and that is one line before training."""
    class Failing(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.send_response(503)
            self.end_headers()
        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    before = snapshot(pipeline_repo)
    try:
        result = train_gan(pipeline_repo, env={"MLFLOW_TRACKING_URI": uri})
        sync = dvc(pipeline_repo, "repro", "-s", "sync_mlflow", check=False,
                   env={**env_for(pipeline_repo), "MLFLOW_TRACKING_URI": uri})
    finally:
        server.shutdown()
    assert_failed_cleanly(result, pipeline_repo, before, f"MLflow store {uri} failed while opening a run")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "train_gan: step" not in result.stdout
    # the stage that brings the store in step meets the same server: one line too
    assert sync.returncode != 0 and "Traceback" not in sync.stdout + sync.stderr, sync.stderr
    assert f"sync_mlflow: error: MLflow store {uri} failed" in sync.stdout + sync.stderr, sync.stderr


def test_locked_tracking_store(pipeline_repo):
    before = snapshot(pipeline_repo)
    holder = sqlite3.connect(pipeline_repo / "mlflow.db", timeout=1)
    holder.execute("BEGIN EXCLUSIVE")  # another program holds the store
    try:
        result = train_gan(pipeline_repo)
    finally:
        holder.rollback()
        holder.close()
    assert_failed_cleanly(result, pipeline_repo, before, "cannot be written", "database is locked")


def test_damaged_store_body_is_reported_before_any_work(pipeline_repo, tmp_path):
    """Garbage in the middle of the database passes a bare BEGIN IMMEDIATE; quick_check sees it."""
    before = snapshot(pipeline_repo)
    damaged = tmp_path / "damaged.db"
    data = bytearray((pipeline_repo / "mlflow.db").read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle:middle + 8192] = b"\xde\xad" * 4096
    damaged.write_bytes(bytes(data))
    result = train_gan(pipeline_repo, env={"MLFLOW_TRACKING_URI": f"sqlite:///{damaged}"})
    assert_failed_cleanly(result, pipeline_repo, before, "is damaged", "move it aside")
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1
    assert not list(pipeline_repo.glob("models/.*.staging")) and not list(pipeline_repo.glob(".*.staging"))


@pytest.mark.parametrize("uri, phrase", [
    ("sqlite://mlflow.db", "write sqlite:///relative/path.db"),
    ("./mlruns", "MLFLOW_ALLOW_FILE_STORE=true"),
    ("file:///tmp/mlruns", "is a file store"),
])
def test_tracking_uris_mlflow_would_refuse_are_named_before_training(pipeline_repo, uri, phrase):
    before = snapshot(pipeline_repo)
    result = train_gan(pipeline_repo, env={"MLFLOW_TRACKING_URI": uri})
    assert_failed_cleanly(result, pipeline_repo, before, phrase)
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1


def test_read_only_store_is_named(tmp_path, monkeypatch):
    # Tests run as root here, which writes through file modes; so the check's input is faked.
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(store.TrackingError, match="is read-only"):
        store.check_store(f"sqlite:///{db}")


def test_nan_loss_stops_with_step_and_params(pipeline_repo):
    before = snapshot(pipeline_repo)
    result = train_gan(pipeline_repo, gan_params(pipeline_repo, lr_d=1e30, lr_g=1e30))
    assert_failed_cleanly(result, pipeline_repo, before, "non-finite loss at step",
                          "lr_d=1e+30", "on_nan: skip")
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    failed = stage_runs(client, "train_gan", "attributes.status = 'FAILED'")
    assert any("non-finite loss" in r.data.tags.get("error", "") for r in failed)


def test_nan_loss_with_on_nan_skip_gives_up_after_max_skips(pipeline_repo):
    before = snapshot(pipeline_repo)
    result = train_gan(pipeline_repo, gan_params(pipeline_repo, lr_d=1e30, lr_g=1e30,
                                                 on_nan="skip", max_nan_skips=3))
    assert_failed_cleanly(result, pipeline_repo, before, "update skipped", "non-finite loss at step")


# the training that Ctrl-C and kill -9 interrupt: quick steps (no grids, no evaluations); the
# checkpoint saves its params, so all three runs use the same ones
RESUMABLE = dict(epochs=6, eval_every=10 ** 6, sample_every=10 ** 6, checkpoint_every=3)


@pytest.fixture(scope="module")
def uninterrupted_gan(pipeline_repo, tmp_path_factory) -> bytes:
    """models/gan.pt of RESUMABLE's training run without a stop: what a resumed run must give."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = stage(pipeline_repo, "train_gan", "--data", "data/mnist.npz", "--judge", "models/judge.pt",
                   "--model", str(out / "gan.pt"), "--losses", str(out / "l.csv"),
                   "--quality", str(out / "q.csv"), "--resume", str(out / "resume.pt"),
                   params=gan_params(pipeline_repo, **RESUMABLE))
    assert result.returncode == 0, result.stderr
    return (out / "gan.pt").read_bytes()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_in_one_line_marks_the_run_killed_and_resumes_to_the_same_bytes(
        pipeline_repo, uninterrupted_gan, signum, code):
    """Ctrl-C, and SIGTERM (what a CI cancel, `timeout` and `kill` send; it used to kill the
    stage on the spot: no line, no resume file, the run left RUNNING), alike."""
    from mlflow.tracking import MlflowClient

    before = snapshot(pipeline_repo)
    params = gan_params(pipeline_repo, **RESUMABLE)
    resume = pipeline_repo / ".resume/train_gan.pt"
    resume.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_gan", "--params", params, "--data",
                             "data/mnist.npz", "--judge", "models/judge.pt", *GAN_OUTS],
                            cwd=pipeline_repo, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**env_for(pipeline_repo), "MNISTGEN_PROGRESS_SECONDS": "0.2"})
    first = proc.stdout.readline()  # the first progress line: training is under way
    assert first.startswith("train_gan: step "), first
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    stopped_at = int(err.split("interrupted at step ")[1].split("/")[0])
    assert resume.exists() and snapshot(pipeline_repo)[0] == before[0]  # outputs untouched
    client = MlflowClient(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    killed = stage_runs(client, "train_gan", "attributes.status = 'KILLED'")
    assert any(f"interrupted at step {stopped_at}" in r.data.tags.get("error", "") for r in killed)

    result = train_gan(pipeline_repo, params)  # resumes where Ctrl-C stopped it
    assert result.returncode == 0, result.stderr
    assert f"resuming from step {stopped_at}" in result.stderr
    # the same params without any interruption give the same bytes
    assert (pipeline_repo / "models/gan.pt").read_bytes() == uninterrupted_gan
    for name in ("models/gan.pt", "plots/gan_losses.csv"):  # as the other tests expect them
        (pipeline_repo / name).write_bytes(before[0][name])


def test_kill_9_then_rerun_resumes_and_never_leaves_half_outputs(pipeline_repo, uninterrupted_gan):
    before_model = (pipeline_repo / "models/gan.pt").read_bytes()
    params = gan_params(pipeline_repo, **RESUMABLE)
    resume = pipeline_repo / ".resume/train_gan.pt"
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_gan", "--params", params, "--data",
                             "data/mnist.npz", "--judge", "models/judge.pt", *GAN_OUTS],
                            cwd=pipeline_repo, env=env_for(pipeline_repo),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not resume.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-training: the resume file holds step 3 (or later)
    proc.wait()
    assert resume.exists()
    assert (pipeline_repo / "models/gan.pt").read_bytes() == before_model  # untouched
    # a write cut short can only leave a hidden temporary file, never a file under a real name
    visible = {p.name for p in (pipeline_repo / "models").iterdir() if not p.name.startswith(".")}
    assert visible == {"gan.pt", "judge.pt", "inverted"}

    result = train_gan(pipeline_repo, params)
    assert result.returncode == 0, result.stderr
    assert "resuming from step" in result.stderr
    resumed_from = int(result.stderr.split("resuming from step ")[1].split()[0])
    assert resumed_from >= 3
    assert not resume.exists()
    assert (pipeline_repo / "models/gan.pt").read_bytes() == uninterrupted_gan
    (pipeline_repo / "models/gan.pt").write_bytes(before_model)
    # one MLflow run for the whole (interrupted + resumed) training
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    runs = stage_runs(client, "train_gan", f"tags.resumed_from_step = '{resumed_from}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_torchrun_two_cpu_processes_give_one_checkpoint_and_one_run(pipeline_repo):
    from mlflow.tracking import MlflowClient

    from mnistgen.generators import load_gan

    client = MlflowClient(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    runs_before = len(stage_runs(client, "train_gan"))
    params = gan_params(pipeline_repo, threads=1, epochs=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "stages.train_gan", "--params", params, "--data", "data/mnist.npz",
           "--judge", "models/judge.pt", "--model", "models/gan_ddp.pt",
           "--losses", "ddp_losses.csv", "--quality", "ddp_quality.csv",
           "--resume", ".resume/ddp.pt"]
    result = subprocess.run(cmd, cwd=pipeline_repo, env=env_for(pipeline_repo),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    drawer = load_gan(pipeline_repo / "models/gan_ddp.pt")  # a valid, loadable checkpoint
    import torch
    images = drawer.draw(torch.arange(10), torch.Generator().manual_seed(0))
    assert images.shape == (10, 784)
    runs = sorted(stage_runs(client, "train_gan"), key=lambda r: -r.info.start_time)
    assert len(runs) == runs_before + 1  # only rank 0 logs
    assert runs[0].data.tags["world_size"] == "2" and runs[0].info.status == "FINISHED"
