"""End to end: the real pipeline on shrunken params in a temporary git + DVC repository."""
import json
import re
import sys

import pytest
import torch
import yaml

from conftest import dvc, sh, write_params

pytestmark = pytest.mark.slow
STAGES = ["check_params", "download", "train_judge", "train_inverted", "train_gan", "sample", "evaluate"]


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_first_repro_runs_every_stage_and_writes_outputs(pipeline_repo):
    assert ran((pipeline_repo / "first_repro.log").read_text()) == set(STAGES)
    for path in ["data/mnist.npz", "models/judge.pt", "models/inverted/softmax.pt",
                 "models/inverted/sigmoid.pt", "models/gan.pt", "samples/gan.npz",
                 "figures/comparison.png", "figures/grid_gan.png", "figures/grid_inverted_softmax.png",
                 "plots/gan_losses.csv", "plots/gan_quality.csv", "dvc.lock"]:
        assert (pipeline_repo / path).is_file(), path
    assert not (pipeline_repo / ".resume/train_gan.pt").exists()  # removed once finished


def test_long_stages_print_progress_through_dvcs_pipe(pipeline_repo):
    """dvc repro's stdout is a pipe here, as in `dvc queue logs` or `make repro | tee`: each
    training stage and evaluate still print their flushed progress lines, ending at 100%."""
    log = (pipeline_repo / "first_repro.log").read_text()
    for stage_name in ("train_judge", "train_gan", "evaluate", "train_inverted"):
        lines = re.findall(rf"^{stage_name}: step (\d+)/(\d+) \((\d+)%\), [\d,]+ \w+/s, "
                           rf"[\d:]+ elapsed, [\d:]+ left", log, re.M)
        assert lines, f"no progress line from {stage_name}:\n{log[-2000:]}"
        step, total, percent = map(int, lines[-1])
        assert step == total and percent == 100, lines[-1]
    assert re.search(r"^train_gan: step .*loss_d [-\d.e]+, loss_g [-\d.e]+", log, re.M)


def test_metrics_have_every_row_and_score(pipeline_repo):
    summary = json.loads((pipeline_repo / "metrics/evaluate.json").read_text())
    assert set(summary["rows"]) == {"real_test", "inverted_softmax", "inverted_sigmoid", "gan"}
    for row in summary["rows"].values():
        assert set(row) == {"accuracy", "frechet", "precision", "recall", "diversity", "cas"}
        assert 0 <= row["accuracy"] <= 1 and row["frechet"] >= 0
    assert summary["floor_frechet"] == summary["rows"]["real_test"]["frechet"]
    # the seed's generator draws one image per digit: no diversity, no recall
    assert summary["rows"]["inverted_softmax"]["diversity"] == 0
    assert summary["rows"]["inverted_softmax"]["recall"] == 0
    per_class = json.loads((pipeline_repo / "metrics/per_class.json").read_text())
    assert set(per_class["gan"]) == {str(c) for c in range(10)}
    shown = dvc(pipeline_repo, "metrics", "show", "--json").stdout
    assert "floor_frechet" in shown and "test_accuracy" in shown


def test_mlflow_has_every_training_run_with_params_metrics_and_images(pipeline_repo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    runs = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            runs.setdefault(exp.name, []).append(run)
    assert {k: len(v) for k, v in runs.items()} == {
        "draw-mnist/train_judge": 1, "draw-mnist/train_inverted": 2,
        "draw-mnist/train_gan": 1, "draw-mnist/evaluate": 1}
    gan = runs["draw-mnist/train_gan"][0]
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())["train_gan"]
    assert gan.data.params["lr_g"] == str(params["lr_g"]) and gan.data.params["epochs"] == "2"
    assert gan.data.tags["dvc_stage"] == "train_gan" and len(gan.data.tags["git_commit"]) == 40
    assert len(client.get_metric_history(gan.info.run_id, "loss_d")) >= 5
    assert client.get_metric_history(gan.info.run_id, "eval_frechet")
    # evaluation numbers land on the training run they judge
    assert "eval.frechet" in gan.data.metrics and "eval.cas" in gan.data.metrics
    images = client.list_artifacts(gan.info.run_id, "images")
    assert any("fixed_noise_grid" in f.path for f in images)
    for run in runs["draw-mnist/train_inverted"]:
        assert "eval.accuracy" in run.data.metrics
    assert "gan.frechet" in runs["draw-mnist/evaluate"][0].data.metrics


def test_second_repro_is_a_noop(pipeline_repo):
    result = dvc(pipeline_repo, "repro")
    assert ran(result.stdout + result.stderr) == set()


def outs_of(lock_text: str) -> dict:
    """{path: md5} of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load(lock_text)
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_forced_rerun_gives_byte_identical_outputs(pipeline_repo):
    before = outs_of((pipeline_repo / "dvc.lock").read_text())
    result = dvc(pipeline_repo, "repro", "--force")
    assert ran(result.stdout + result.stderr) == set(STAGES)
    assert outs_of((pipeline_repo / "dvc.lock").read_text()) == before


def test_bad_param_stops_with_the_key_named_and_outputs_intact(pipeline_repo):
    before = (pipeline_repo / "dvc.lock").read_text()
    model = (pipeline_repo / "models/gan.pt").read_bytes()
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["train_gan"]["lr_gg"] = 0.1
    write_params(pipeline_repo, params)
    try:
        result = dvc(pipeline_repo, "repro", "train_gan", check=False)
        assert result.returncode != 0
        assert "train_gan.lr_gg: unknown key (did you mean 'lr_g'?)" in result.stdout + result.stderr
    finally:
        del params["train_gan"]["lr_gg"]
        write_params(pipeline_repo, params)
    # check_params stopped the run before DVC removed any output
    assert "Running stage 'train_gan'" not in result.stdout + result.stderr
    assert (pipeline_repo / "models/gan.pt").read_bytes() == model
    assert (pipeline_repo / "dvc.lock").read_text() == before


def test_editing_train_gan_reruns_only_what_depends_on_it(pipeline_repo):
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["train_gan"]["lr_g"] = 0.0003
    write_params(pipeline_repo, params)
    result = dvc(pipeline_repo, "repro")
    # check_params reruns on any edit (a second), but writes the same bytes: nothing else follows
    assert ran(result.stdout + result.stderr) == {"check_params", "train_gan", "sample", "evaluate"}


def mlflow_run_count(repo) -> int:
    import sqlite3

    with sqlite3.connect(repo / "mlflow.db") as con:
        return con.execute("select count(*) from runs").fetchone()[0]


def test_setting_a_param_back_restores_from_the_run_cache(pipeline_repo):
    """Run A (the first repro), run B (lr_g 0.0003, the test above), then A's value again:
    DVC's run cache restores A's outputs byte for byte without training or logging a run."""
    import time

    runs_before = mlflow_run_count(pipeline_repo)
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["train_gan"]["lr_g"] = yaml.safe_load(
        (pipeline_repo / "first_dvc.lock").read_text())["stages"]["train_gan"]["params"][
        "params.yaml"]["train_gan"]["lr_g"]
    write_params(pipeline_repo, params)
    start = time.monotonic()
    result = dvc(pipeline_repo, "repro")
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    assert ran(output) == {"check_params"}, output
    for name in ("train_gan", "sample", "evaluate"):
        assert f"Stage '{name}' is cached - skipping run, checking out outputs" in output
    first = outs_of((pipeline_repo / "first_dvc.lock").read_text())
    assert outs_of((pipeline_repo / "dvc.lock").read_text()) == first
    assert mlflow_run_count(pipeline_repo) == runs_before
    print(f"run-cache restore of train_gan, sample and evaluate: {seconds:.1f} s")


def test_a_failure_after_dvc_removed_the_outputs_names_the_checkout_that_restores_them(pipeline_repo):
    """A NaN loss only shows once training runs, after DVC removed train_gan's outputs: the
    message names `dvc checkout train_gan`, which brings back the last good model."""
    model = (pipeline_repo / "models/gan.pt").read_bytes()
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    good = dict(params["train_gan"])
    params["train_gan"].update(lr_d=1e30, lr_g=1e30)
    write_params(pipeline_repo, params)
    try:
        result = dvc(pipeline_repo, "repro", "train_gan", check=False)
    finally:
        params["train_gan"] = good
        write_params(pipeline_repo, params)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "non-finite loss at step" in output
    assert "`dvc checkout train_gan` restores its last good outputs" in output
    assert not (pipeline_repo / "models/gan.pt").exists()
    dvc(pipeline_repo, "checkout", "train_gan")
    assert (pipeline_repo / "models/gan.pt").read_bytes() == model
    # only check_params (which passed on the bad values) needs its lock entry back
    result = dvc(pipeline_repo, "repro")
    assert ran(result.stdout + result.stderr) == {"check_params"}


def test_editing_a_library_module_marks_exactly_its_importers_changed(pipeline_repo):
    """images.py is imported by every stage but download: `dvc status` must say so."""
    path = pipeline_repo / "mnistgen/images.py"
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        status = json.loads(dvc(pipeline_repo, "status", "--json").stdout)
    finally:
        path.write_text(original)
    assert set(status) == {"check_params", "train_judge", "train_inverted", "train_gan", "sample",
                           "evaluate"}
    assert json.loads(dvc(pipeline_repo, "status", "--json").stdout) == {}


def test_queued_experiments_all_reach_mlflow_and_dvc(pipeline_repo):
    import time

    from mlflow.tracking import MlflowClient

    sh(pipeline_repo, "git", "add", "-A")
    sh(pipeline_repo, "git", "commit", "-qm", "baseline results")
    rates = ("0.0001", "0.0002", "0.0005", "0.0008")
    for lr in rates:
        dvc(pipeline_repo, "exp", "run", "--queue", "-S", f"train_gan.lr_d={lr}")
    dvc(pipeline_repo, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(pipeline_repo, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    assert status.count("Success") == 4, status
    shown = json.loads(dvc(pipeline_repo, "exp", "show", "--json").stdout)
    exps = [e for baseline in shown for exp in (baseline.get("experiments") or [])
            for e in exp.get("revs", [])]
    assert len(exps) == 4
    for exp in exps:
        data = exp["data"]
        assert str(data["params"]["params.yaml"]["data"]["train_gan"]["lr_d"]) in rates
        assert "rows" in data["metrics"]["metrics/evaluate.json"]["data"]
    # both runs landed in the one store at the real repository root (found through DVC_ROOT)
    client = MlflowClient(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    exp_id = client.get_experiment_by_name("draw-mnist/train_gan").experiment_id
    queued = client.search_runs([exp_id], filter_string="tags.dvc_exp_name != ''")
    assert len(queued) == 4  # none lost to "database is locked" or a temporary directory
    assert {r.data.params["lr_d"] for r in queued} == set(rates)
    assert all(r.info.status == "FINISHED" and "eval.frechet" in r.data.metrics for r in queued)
    # a parameter set seen before (here: in the queue) is restored by the run cache, not retrained
    result = dvc(pipeline_repo, "exp", "run", "-S", "train_gan.lr_d=0.0002")
    output = result.stdout + result.stderr
    assert "Stage 'train_gan' is cached - skipping run, checking out outputs" in output, output
    assert "Running stage 'train_gan'" not in output


def test_sweep_reproduces_the_pipelines_gan_and_names_a_broken_variant(pipeline_repo, tmp_path):
    """bench.sweep trains and scores without MLflow or DVC; on the same params (CPU, same
    threads) its 'default' run must train the pipeline's GAN bit for bit: scoring the
    pipeline's models/gan.pt the same way gives the same numbers."""
    from conftest import ROOT
    from bench.sweep import score
    from mnistgen.data import load_arrays
    from mnistgen.generators import load_gan
    from mnistgen.judging import load_judge

    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"default": {}, "broken": {"g_hidden": "wide"}}))
    out = tmp_path / "runs.jsonl"
    sh(ROOT, sys.executable, "-m", "bench.sweep", "--variants", str(variants), "--out", str(out),
       "--params", str(pipeline_repo / "params.yaml"), "--data", str(pipeline_repo / "data/mnist.npz"),
       "--judge", str(pipeline_repo / "models/judge.pt"), "--per-class", "20")
    runs = {r["name"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "train_gan.g_hidden: expected a list of int" in runs["broken"]["error"]
    drawer = load_gan(pipeline_repo / "models/gan.pt")
    expected = score(generator=drawer.model, latent_dim=drawer.latent_dim, per_class=20,
                     arrays=load_arrays(pipeline_repo / "data/mnist.npz"), device=torch.device("cpu"),
                     judge=load_judge(pipeline_repo / "models/judge.pt"),
                     params_path=pipeline_repo / "params.yaml")
    assert {k: runs["default"][k] for k in expected} == expected
    assert 0 < expected["frechet"] and 0 <= expected["cas"] <= 1


def test_score_reproduces_evaluates_gan_row_and_scores_a_users_32px_file(pipeline_repo, tmp_path):
    """`python -m mnistgen.score` on the project's own GAN samples gives exactly evaluate's
    GAN row; a user's file of 32x32 digits (real ones here) is resized and scored the same way."""
    result = sh(pipeline_repo, sys.executable, "-m", "mnistgen.score", "samples/gan.npz",
                "--out", str(tmp_path / "gan.json"))
    assert result.stdout.startswith("score: samples/gan.npz: accuracy ")
    scored = json.loads((tmp_path / "gan.json").read_text())
    summary = json.loads((pipeline_repo / "metrics/evaluate.json").read_text())
    assert scored["row"] == summary["rows"]["gan"]
    assert scored["floor_frechet"] == summary["floor_frechet"]

    import numpy as np
    from torchvision.transforms.v2 import functional as TF

    with np.load(pipeline_repo / "data/mnist.npz") as data:
        images, labels = data["test_images"][:1000], data["test_labels"][:1000]
    big = TF.resize(torch.as_tensor(images).reshape(-1, 1, 28, 28).float(), [32, 32], antialias=True)
    np.savez(tmp_path / "mine.npz", images=big.round().to(torch.uint8).squeeze(1).numpy(), labels=labels)
    sh(pipeline_repo, sys.executable, "-m", "mnistgen.score", str(tmp_path / "mine.npz"))
    mine = json.loads((tmp_path / "mine.score.json").read_text())["row"]
    assert mine["accuracy"] > 0.5 and mine["recall"] > 0  # real digits, after the documented resize
    bad = sh(pipeline_repo, sys.executable, "-m", "mnistgen.score", "data/mnist.npz", check=False)
    assert bad.returncode == 1 and "no 'images' array" in bad.stderr and "Traceback" not in bad.stderr
