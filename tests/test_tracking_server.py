"""A team's set-up, as docs/mlflow.md's "A team" section runs it: one `mlflow server` (SQLite
backend, proxied artifacts) on 127.0.0.1 and a DVC remote (a local folder here). The whole
pipeline over HTTP; colleagues' clones that pull or reproduce instead of training, with the
team's server or a store of their own; and the server going away while train_gan trains."""
import json
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import yaml

from conftest import copy_repo, dvc, env_for, sh, shrunk_params, stage_runs, store_client
from mnistgen.data import sha256_file
from servers import Relay, mlflow_server

pytestmark = pytest.mark.slow
GAN_OUTS = ["--data", "data/mnist.npz", "--judge", "models/judge.pt"]


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("server")) as url:
        yield url


# the GAN's half of the pipeline, in order (`dvc repro -s` runs them as listed): trained over
# HTTP; sync_mlflow then records the judge and the inverted generators (models and all)
# through the same server
SERVER_STAGES = ["train_gan", "sample", "evaluate", "sync_mlflow"]


@pytest.fixture(scope="module")
def team_repo(server, built_pipeline, tmp_path_factory):
    """The built pipeline (results committed, `dvc push`ed to a local remote) with the GAN's
    stages run again against the server: the same bytes, now in the team's store."""
    repo = copy_repo(built_pipeline, tmp_path_factory.mktemp("team") / "repo")
    for local in ("mlflow.db", "mlruns"):  # its own store: the team uses the server
        shutil.rmtree(repo / local) if (repo / local).is_dir() else (repo / local).unlink()
    result = dvc(repo, "repro", "--force", "--single-item", *SERVER_STAGES,
                 env={"MLFLOW_TRACKING_URI": server})
    assert ran(result.stdout + result.stderr) == set(SERVER_STAGES)
    assert sh(repo, "git", "status", "--porcelain").stdout == ""  # the committed bytes
    return repo


def server_client(url):
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


def clone(repo, target):
    subprocess.run(["git", "clone", "-q", str(repo), str(target)], check=True)
    return target


def test_the_pipeline_runs_over_http_with_proxied_artifacts(team_repo, server):
    import mlflow
    import pandas as pd

    client = server_client(server)
    runs = {stage: stage_runs(client, stage) for stage in ("train_judge", "train_inverted", "train_gan",
                                                          "evaluate")}
    assert {k: len(v) for k, v in runs.items()} == {"train_judge": 1, "train_inverted": 2, "train_gan": 1,
                                                    "evaluate": 1}
    assert all(r.info.status == "FINISHED" for group in runs.values() for r in group)
    gan = runs["train_gan"][0]
    assert "mnistgen.recorded" not in gan.data.tags  # trained over HTTP; the judge recorded
    assert "mnistgen.recorded" in runs["train_judge"][0].data.tags
    assert len(client.search_logged_models([gan.info.experiment_id])) == 4  # pt2 and pyfunc uploads
    summary = json.loads((team_repo / "metrics/evaluate.json").read_text())
    assert gan.data.metrics["final/frechet"] == summary["rows"]["gan"]["frechet"]
    parent = client.get_run(gan.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["gan/frechet"] == summary["rows"]["gan"]["frechet"]
    assert client.get_model_version_by_alias("draw-mnist-cgan", "champion").run_id == gan.info.run_id
    # artifacts went through the server: nothing local beside the repository's outputs
    assert not (team_repo / "mlruns").exists() and not (team_repo / "mlflow.db").exists()
    assert not (team_repo / ".mlflow-outbox").exists()
    mlflow.set_tracking_uri(server)
    model = mlflow.pyfunc.load_model("models:/draw-mnist-cgan@champion")
    assert model.predict(pd.DataFrame([{"digit": 7, "count": 3}])).shape == (3, 28, 28)


def test_a_colleague_pulls_instead_of_training_and_the_server_already_shows_it(team_repo, server,
                                                                                tmp_path):
    """`dvc pull` in a fresh clone: `dvc repro` runs no stage but the store check, which
    finds the team's server already showing these outputs; `mnistgen.draw` works at once."""
    client = server_client(server)
    runs_before = len(client.search_runs([gan_experiment(client)]))
    repo = clone(team_repo, tmp_path / "colleague")
    dvc(repo, "pull", "-q")
    result = dvc(repo, "repro", env={"MLFLOW_TRACKING_URI": server})
    output = result.stdout + result.stderr
    assert ran(output) == {"sync_mlflow"}, output
    assert "already shows the current outputs" in output
    assert len(client.search_runs([gan_experiment(client)])) == runs_before
    drawn = sh(repo, sys.executable, "-m", "mnistgen.draw", "7", "--out", str(tmp_path / "sevens.png"))
    assert (tmp_path / "sevens.png").is_file(), drawn.stderr
    assert sh(repo, "git", "status", "--porcelain").stdout == ""


def gan_experiment(client) -> str:
    return client.get_experiment_by_name("draw-mnist").experiment_id


def test_a_new_store_after_dvc_pull_shows_what_dvc_holds(team_repo, tmp_path):
    """A colleague with a store of their own (the default SQLite file) pulls: DVC runs
    nothing, and the store still ends up with a run per checkpoint, the scores on them and
    on a pipeline run, and @champion; a second `dvc repro` writes nothing more."""
    import mlflow
    import pandas as pd

    repo = clone(team_repo, tmp_path / "own-store")
    dvc(repo, "pull", "-q")
    result = dvc(repo, "repro")
    output = result.stdout + result.stderr
    assert ran(output) == {"sync_mlflow"}, output
    client = store_client(repo)
    summary = json.loads((repo / "metrics/evaluate.json").read_text())
    gan = stage_runs(client, "train_gan")[0]
    assert gan.data.tags["checkpoint_sha256"] == sha256_file(repo / "models/gan.pt")
    assert "mnistgen.recorded" in gan.data.tags  # recorded from DVC's outputs, not trained here
    assert gan.data.metrics["final/frechet"] == summary["rows"]["gan"]["frechet"]
    assert gan.data.params["epochs"] == str(shrunk_params()["train_gan"]["epochs"])
    assert len(client.get_metric_history(gan.info.run_id, "train/loss_d")) > 1  # from plots/
    assert {len(stage_runs(client, s)) for s in ("train_judge", "train_gan")} == {1}
    assert len(stage_runs(client, "train_inverted")) == 2
    parent = client.get_run(gan.data.tags["mlflow.parentRunId"])
    assert parent.data.metrics["gan/frechet"] == summary["rows"]["gan"]["frechet"]
    assert client.get_model_version_by_alias("draw-mnist-cgan", "champion").run_id == gan.info.run_id
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/draw-mnist-cgan@champion")
    assert model.predict(pd.DataFrame([{"digit": 3}])).shape == (1, 28, 28)
    counts = count_rows(repo)
    again = dvc(repo, "repro")
    assert "already shows the current outputs" in again.stdout
    assert count_rows(repo) == counts


def count_rows(repo) -> dict:
    import sqlite3

    with sqlite3.connect(repo / "mlflow.db") as con:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0]
                for t in ("runs", "metrics", "tags", "model_versions", "logged_models")}


def test_a_fresh_clone_that_reproduces_the_committed_bytes_gets_the_scores_too(team_repo, tmp_path):
    """The README's first use in a fresh clone: every training stage runs again and gives
    the committed bytes (what `dvc repro --force` on one machine must do too), so DVC skips
    `evaluate` (its metrics are in git). The new store still gets evaluate's scores on the
    training runs it just made, the pipeline run and @champion."""
    repo = clone(team_repo, tmp_path / "fresh")
    dvc(repo, "pull", "-q", "download")  # the data only (no network in a test)
    result = dvc(repo, "repro")
    output = result.stdout + result.stderr
    assert ran(output) == {"train_judge", "train_inverted", "train_gan", "sample", "sync_mlflow"}
    assert "Stage 'evaluate' didn't change, skipping" in output
    assert sh(repo, "git", "status", "--porcelain").stdout == ""  # the same bytes
    client = store_client(repo)
    gan = stage_runs(client, "train_gan")[0]
    assert "mnistgen.recorded" not in gan.data.tags  # trained here, now
    summary = json.loads((repo / "metrics/evaluate.json").read_text())
    assert gan.data.metrics["final/frechet"] == summary["rows"]["gan"]["frechet"]
    assert client.get_run(gan.data.tags["mlflow.parentRunId"]).data.metrics["gan/frechet"] == \
        summary["rows"]["gan"]["frechet"]
    assert client.get_model_version_by_alias("draw-mnist-cgan", "champion").run_id == gan.info.run_id


# ---------------------------------------------------------------- outages


def outage_params(repo, tmp_path, **tracking) -> str:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train_gan"].update(epochs=6, log_every=5, eval_every=50, sample_every=25)
    params["tracking"].update(tracking)
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def start_training(repo, tmp_path, params: str, uri: str) -> subprocess.Popen:
    outs = ["--model", str(tmp_path / "gan.pt"), "--losses", str(tmp_path / "l.csv"),
            "--quality", str(tmp_path / "q.csv"), "--resume", str(tmp_path / "resume.pt")]
    env = {**env_for(repo), "MLFLOW_TRACKING_URI": uri, "MNISTGEN_PROGRESS_SECONDS": "0.2"}
    return subprocess.Popen([sys.executable, "-m", "stages.train_gan", "--params", params, *GAN_OUTS,
                             *outs], cwd=repo, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def newest_gan_run(client):
    return max(stage_runs(client, "train_gan"), key=lambda r: r.info.start_time)


def assert_everything_arrived(client, run, steps: int, log_every: int) -> None:
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss_d")
    assert sorted(m.step for m in history) == list(range(log_every, steps + 1, log_every))
    grids = {a.path.split("+")[2] for a in client.list_artifacts(run.info.run_id, "images")}
    assert grids == {str(step) for step in [*range(0, steps + 1, 25), steps]}  # and the last
    assert "final_digits.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert client.search_model_versions(f"run_id = '{run.info.run_id}'")


def test_a_server_gone_mid_training_costs_no_training_and_no_record(team_repo, server, tmp_path):
    """The server goes away once training is under way and comes back 3 s later: training
    goes on, the stage succeeds, and every metric, grid and the model reach the server."""
    relay = Relay(int(server.rsplit(":", 1)[1]))
    try:
        proc = start_training(team_repo, tmp_path, outage_params(team_repo, tmp_path), relay.url)
        assert proc.stdout.readline().startswith("train_gan: step ")  # training under way
        relay.cut()
        with pytest.raises(ConnectionRefusedError):  # the server is away
            socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        time.sleep(3)
        relay.restore()
        out, err = proc.communicate(timeout=300)
    finally:
        relay.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "did not take" not in err, err
    client = server_client(server)
    assert_everything_arrived(client, newest_gan_run(client), steps=60, log_every=5)


def test_a_server_gone_until_the_end_keeps_the_outputs_and_says_what_waits(team_repo, server, tmp_path):
    """The server goes away mid-training and stays away: the stage still writes its outputs
    and succeeds, one line says what did not reach the server and how to send it; once the
    server is back, `python -m mnistgen.tracking` sends it all and the run ends FINISHED."""
    relay = Relay(int(server.rsplit(":", 1)[1]))
    try:
        proc = start_training(team_repo, tmp_path, outage_params(team_repo, tmp_path, outage_wait=1),
                              relay.url)
        assert proc.stdout.readline().startswith("train_gan: step ")
        relay.cut()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert (tmp_path / "gan.pt").is_file()  # the DVC output is there
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "did not take" in lines[0] and "python -m mnistgen.tracking" in lines[0], err
        assert list((team_repo / ".mlflow-outbox").iterdir())
        relay.restore()
        sent = sh(team_repo, sys.executable, "-m", "mnistgen.tracking", env={"MLFLOW_TRACKING_URI": relay.url})
        assert "sent the records of 1 run" in sent.stdout
    finally:
        relay.close()
    assert not (team_repo / ".mlflow-outbox").exists()  # nothing left waiting
    client = server_client(server)
    assert_everything_arrived(client, newest_gan_run(client), steps=60, log_every=5)
