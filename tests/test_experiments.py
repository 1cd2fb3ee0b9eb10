"""`dvc repro --force` and queued `dvc exp run`s on copies of the built pipeline: the same
bytes again, and every experiment in DVC and in the one MLflow store."""
import json
import re
import time

import pytest
import yaml

from conftest import dvc, stage_runs, store_client

pytestmark = pytest.mark.slow
STAGES = {"check_params", "download", "train_judge", "train_inverted", "train_gan", "sample", "evaluate",
          "sync_mlflow"}


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def outs_of(lock_text: str) -> dict:
    """{path: md5} of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load(lock_text)
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_forced_rerun_gives_byte_identical_outputs(pipeline_copy):
    before = outs_of((pipeline_copy / "dvc.lock").read_text())
    result = dvc(pipeline_copy, "repro", "--force")
    assert ran(result.stdout + result.stderr) == STAGES
    assert outs_of((pipeline_copy / "dvc.lock").read_text()) == before


def test_queued_experiments_all_reach_mlflow_and_dvc(pipeline_copy):
    """Two experiments at once (`-j 2`) in temporary copies: both reach DVC and the one
    store at the real repository root (found through DVC_ROOT), none lost to 'database is
    locked'; a parameter set seen before is restored by the run cache, and the store still
    shows that experiment (a pipeline run with its scores) without a new training run."""
    repo = pipeline_copy
    rates = ("0.0002", "0.0005")
    for lr in rates:
        dvc(repo, "exp", "run", "--queue", "-S", f"train_gan.lr_d={lr}")
    dvc(repo, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(2)
    assert status.count("Success") == 2, status
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    exps = [e for baseline in shown for exp in (baseline.get("experiments") or [])
            for e in exp.get("revs", [])]
    assert len(exps) == 2
    for exp in exps:
        data = exp["data"]
        assert str(data["params"]["params.yaml"]["data"]["train_gan"]["lr_d"]) in rates
        assert "rows" in data["metrics"]["metrics/evaluate.json"]["data"]
    client = store_client(repo)
    queued = stage_runs(client, "train_gan", "tags.dvc_exp_name != ''")
    assert {r.data.params["lr_d"] for r in queued} == set(rates) and len(queued) == 2
    assert all(r.info.status == "FINISHED" and "final/frechet" in r.data.metrics for r in queued)
    # names say which experiment and what changed; each experiment has its own parent run
    for run in queued:
        exp_name, lr_d = run.data.tags["dvc_exp_name"], run.data.params["lr_d"]
        assert run.info.run_name.startswith(f"train_gan [{exp_name}] lr_d={lr_d} #"), run.info.run_name
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.info.run_name.startswith("dvc ") and f"[{exp_name}]" in parent.info.run_name
        assert f"train_gan.lr_d={lr_d}" in parent.info.run_name
        assert parent.data.metrics["gan/frechet"] == run.data.metrics["final/frechet"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in queued}) == 2

    trained = len(stage_runs(client, "train_gan"))
    result = dvc(repo, "exp", "run", "-S", "train_gan.lr_d=0.0002")
    output = result.stdout + result.stderr
    assert "Stage 'train_gan' is cached - skipping run, checking out outputs" in output, output
    assert "Running stage 'train_gan'" not in output
    assert len(stage_runs(client, "train_gan")) == trained
    restored = [r for r in client.search_runs([queued[0].info.experiment_id],
                                              "tags.`mnistgen.role` = 'pipeline'")
                if "lr_d=0.0002" in r.info.run_name]
    assert len(restored) == 2  # the queued run's and this one's, both with their scores
    assert all("gan/frechet" in r.data.metrics for r in restored)
