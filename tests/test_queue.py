"""Queued `dvc exp run`s on a copy of the built pipeline: every experiment in DVC and in
the one MLflow store. (Byte-identical reruns: test_tracking_server's fresh clone, which
trains every stage again.)"""
import json

import pytest

from conftest import dvc, stage_runs, store_client

pytestmark = pytest.mark.slow
def test_queued_experiments_all_reach_mlflow_and_dvc(pipeline_copy):
    """Two experiments at once (`-j 2`) in temporary copies: both reach DVC and the one
    store at the real repository root (found through DVC_ROOT), none lost to 'database is
    locked'; a parameter set seen before is restored by the run cache, and the store still
    shows that experiment (a pipeline run with its scores) without a new run of the stage.
    (They change `evaluate`, the cheapest stage that logs a run.)"""
    repo = pipeline_copy
    values = ("2", "4")
    for k in values:
        dvc(repo, "exp", "run", "--queue", "-S", f"evaluate.k={k}")
    dvc(repo, "exp", "run", "--run-all", "-j", "2")  # the queue's workers, waited for
    status = dvc(repo, "queue", "status").stdout
    assert status.count("Success") == 2, status
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    exps = [e for baseline in shown for exp in (baseline.get("experiments") or [])
            for e in exp.get("revs", [])]
    assert len(exps) == 2
    for exp in exps:
        data = exp["data"]
        assert str(data["params"]["params.yaml"]["data"]["evaluate"]["k"]) in values
        assert "rows" in data["metrics"]["metrics/evaluate.json"]["data"]
    client = store_client(repo)
    queued = stage_runs(client, "evaluate", "tags.dvc_exp_name != ''")
    assert {r.data.params["k"] for r in queued} == set(values) and len(queued) == 2
    assert all(r.info.status == "FINISHED" and "gan/frechet" in r.data.metrics for r in queued)
    # names say which experiment and what changed; each experiment has its own parent run
    for run in queued:
        exp_name, k = run.data.tags["dvc_exp_name"], run.data.params["k"]
        assert run.info.run_name.startswith(f"evaluate [{exp_name}] k={k} #"), run.info.run_name
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.info.run_name.startswith(f"dvc exp run [{exp_name}] evaluate.k={k} #"), \
            parent.info.run_name
        assert parent.data.metrics["gan/frechet"] == run.data.metrics["gan/frechet"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in queued}) == 2

    evaluated = len(stage_runs(client, "evaluate"))
    result = dvc(repo, "exp", "run", "-S", "evaluate.k=2")
    output = result.stdout + result.stderr
    assert "Stage 'evaluate' is cached - skipping run, checking out outputs" in output, output
    assert "Running stage 'evaluate'" not in output
    assert len(stage_runs(client, "evaluate")) == evaluated
    restored = [r for r in client.search_runs([queued[0].info.experiment_id],
                                              "tags.`mnistgen.role` = 'pipeline'")
                if "evaluate.k=2" in r.info.run_name]
    assert len(restored) == 2  # the queued run's and this one's, both with their scores
    assert all("gan/frechet" in r.data.metrics for r in restored)
