"""The `champion` alias moves only to a better generator; experiments open as model training;
stage runs nest under their dvc invocation's parent run."""
import pytest

from mnistgen.tracking.settings import TrackingParams


QUIET = TrackingParams(system_metrics=False, system_metrics_every=10, outage_wait=5)


@pytest.fixture
def store(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(var, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def trained(client, experiment_id: str, sha: str, ratio: float, judge: str = "j" * 64) -> str:
    """A finished training run that wrote checkpoint `sha`, scored `ratio` x the floor by
    `judge`, with a registered version of draw-mnist-cgan."""
    run = client.create_run(experiment_id, tags={"checkpoint_sha256": sha, "final/judge_sha256": judge})
    client.log_metric(run.info.run_id, "final/frechet_x_floor", ratio)
    client.set_terminated(run.info.run_id)
    client.create_model_version("draw-mnist-cgan", source=f"runs:/{run.info.run_id}/generator",
                                run_id=run.info.run_id)
    return run.info.run_id


def promoter(client):
    """promote_champion(sha, judge_sha256=...): decide as sync_mlflow does, on the score the
    checkpoint's run holds, and move the alias when told to. -> the decision's words."""
    from mnistgen.tracking.registry import champion_decision, find_training_run

    def promote_champion(sha, *, judge_sha256, registered_name):
        run = find_training_run(client, sha)
        version, message = champion_decision(client, run.info.run_id, run.data.metrics["final/frechet_x_floor"],
                                             judge_sha256=judge_sha256, registered_name=registered_name)
        if version is not None:
            client.set_registered_model_alias(registered_name, "champion", version)
        return message
    return promote_champion


def test_champion_moves_only_to_a_generator_that_beats_it(store):
    promote_champion = promoter(store)

    exp = store.create_experiment("draw-mnist")
    store.create_registered_model("draw-mnist-cgan")
    first = trained(store, exp, "a" * 64, 5.0)
    assert "is now @champion" in promote_champion("a" * 64, judge_sha256="j" * 64, registered_name="draw-mnist-cgan")
    assert store.get_model_version_by_alias("draw-mnist-cgan", "champion").run_id == first
    trained(store, exp, "b" * 64, 6.5)  # worse: the alias stays
    message = promote_champion("b" * 64, judge_sha256="j" * 64, registered_name="draw-mnist-cgan")
    assert "does not beat @champion v1 (5.00x); champion unchanged" in message
    assert store.get_model_version_by_alias("draw-mnist-cgan", "champion").run_id == first
    better = trained(store, exp, "c" * 64, 4.0)
    assert "is now @champion (was v1)" in promote_champion("c" * 64, judge_sha256="j" * 64, registered_name="draw-mnist-cgan")
    assert store.get_model_version_by_alias("draw-mnist-cgan", "champion").run_id == better
    assert "already @champion" in promote_champion("c" * 64, judge_sha256="j" * 64,
                                                   registered_name="draw-mnist-cgan")


def test_a_champion_scored_by_another_judge_is_not_compared(store):
    promote_champion = promoter(store)

    exp = store.create_experiment("draw-mnist")
    store.create_registered_model("draw-mnist-cgan")
    trained(store, exp, "a" * 64, 4.0, judge="old" * 20)
    promote_champion("a" * 64, judge_sha256="old" * 20, registered_name="draw-mnist-cgan")
    # a worse ratio, but under a new judge: the old 4.0x is in other units
    newer = trained(store, exp, "b" * 64, 7.7, judge="new" * 20)
    message = promote_champion("b" * 64, judge_sha256="new" * 20, registered_name="draw-mnist-cgan")
    assert "is now @champion (was v1, scored by another judge: not comparable)" in message
    assert store.get_model_version_by_alias("draw-mnist-cgan", "champion").run_id == newer
    # from then on, runs under the new judge compete as usual
    trained(store, exp, "c" * 64, 8.0, judge="new" * 20)
    assert "does not beat @champion v2 (7.70x)" in promote_champion(
        "c" * 64, judge_sha256="new" * 20, registered_name="draw-mnist-cgan")


def test_runs_go_to_one_model_training_experiment_and_old_ones_are_marked(store):
    from mnistgen.tracking import runs

    old = store.create_experiment("draw-mnist/train_gan")  # an earlier version's layout
    with runs.start_run(stage="train_gan", params={"lr_g": 0.0004}, settings=QUIET) as run:
        pass
    exp = store.get_experiment(store.get_run(run.run_id).info.experiment_id)
    assert exp.name == "draw-mnist"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert store.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    finished = store.get_run(run.run_id)
    assert finished.info.run_name.startswith("train_gan #") and finished.info.status == "FINISHED"
    # run by hand, not by dvc: no parent run
    assert "mlflow.parentRunId" not in finished.data.tags


def test_stage_runs_of_one_dvc_invocation_share_a_parent(store, monkeypatch, tmp_path):
    from mnistgen.tracking import runs as records

    (tmp_path / "params.yaml").write_text("train_gan:\n  lr_g: 0.0004\n")
    monkeypatch.setattr(records, "dvc_invocation", lambda: ("host:123:1.00", "dvc repro"))
    ids = []
    for stage in ("train_gan", "evaluate"):
        with records.start_run(stage=stage, params={"seed": 0}, settings=QUIET) as run:
            ids.append(run.run_id)
    runs = [store.get_run(i) for i in ids]
    parent = store.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert runs[1].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.run_name.startswith("dvc repro #") and parent.info.status == "FINISHED"
    assert parent.data.params["train_gan.lr_g"] == "0.0004"
    assert parent.info.end_time >= runs[1].info.end_time  # it spans its stages
    # another dvc process: another parent
    monkeypatch.setattr(records, "dvc_invocation", lambda: ("host:456:2.00", "dvc exp run"))
    with records.start_run(stage="train_gan", params={"seed": 0}, settings=QUIET) as run:
        pass
    assert store.get_run(run.run_id).data.tags["mlflow.parentRunId"] != parent.info.run_id


def test_after_make_repro_the_store_shows_the_current_gan_and_its_champion_draws_sevens():
    """After `make repro` in this repository (the test skips before it: no models/gan.pt),
    the store shows evaluate's scores on the run that trained models/gan.pt, and
    `models:/draw-mnist-cgan@champion` (the README's snippet), asked for sevens, draws sevens."""
    import json

    import mlflow
    import pandas as pd
    import torch
    from mlflow.tracking import MlflowClient

    from conftest import REPO_TRACKING_URI as uri, ROOT
    from mnistgen.data import sha256_file
    from mnistgen.judging import features_and_predictions, load_judge
    from mnistgen.tracking.registry import find_training_run

    if not (ROOT / "models/gan.pt").is_file():
        pytest.skip("needs this repository's pipeline run (`make repro`): no models/gan.pt yet")
    run = find_training_run(MlflowClient(uri), sha256_file(ROOT / "models/gan.pt"))
    assert run is not None, f"no run in {uri} wrote models/gan.pt; `dvc repro` records it"
    row = json.loads((ROOT / "metrics/evaluate.json").read_text())["rows"]["gan"]
    assert {k: run.data.metrics.get(f"final/{k}") for k in row} == row
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/draw-mnist-cgan@champion")
    sevens = model.predict(pd.DataFrame([{"digit": 7, "count": 32, "seed": 0}]))
    judge = load_judge(ROOT / "models/judge.pt", torch.device("cpu"))
    _, predictions = features_and_predictions(judge, sevens.reshape(-1, 784))
    assert (predictions == 7).mean() >= 0.9, predictions


def test_make_ui_prints_the_runs_table_in_the_model_training_view():
    """MLflow 3.17's UI opens experiments on GenAI traces unless its workflow switch (URL
    parameter `workflowType`) says model training; the tag is for UIs that read it. Seen in
    headless Chromium (`make ui-check`): with the parameter the experiment opens on Runs."""
    from conftest import ROOT
    from mnistgen.tracking import store

    assert store.ui_path("7") == "#/experiments/7/runs?workflowType=machine_learning"
    assert store.ui_path(None) == "#/experiments?workflowType=machine_learning"
    assert "tools/ui.py" in (ROOT / "Makefile").read_text().split("\nui:")[1].split("\n\n")[0]


def test_a_rate_written_4e_4_is_one_number_in_names_and_params(store, monkeypatch, tmp_path):
    """Most people write learning rates as `4e-4`. Read as the stages read params.yaml, the
    committed file names no param as changed, and the parent and the stage run log one value."""
    from conftest import sh
    from mnistgen.params import read_params
    from mnistgen.tracking import runs as records

    (tmp_path / "params.yaml").write_text("train_gan:\n  lr_g: 4e-4\n  seed: 0\n")
    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, "git", "add", "params.yaml")
    sh(tmp_path, "git", "commit", "-qm", "params")
    monkeypatch.setattr(records, "dvc_invocation", lambda: ("host:789:3.00", "dvc repro"))
    stage_params = read_params(tmp_path / "params.yaml")["train_gan"]  # what the stage logs
    with records.start_run(stage="train_gan", params=stage_params, settings=QUIET) as run:
        pass
    stage = store.get_run(run.run_id)
    parent = store.get_run(stage.data.tags["mlflow.parentRunId"])
    assert "lr_g" not in stage.info.run_name and "lr_g" not in parent.info.run_name
    assert stage.data.params["lr_g"] == parent.data.params["train_gan.lr_g"] == "0.0004"
