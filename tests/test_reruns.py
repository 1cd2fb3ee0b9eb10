"""What DVC reruns, skips or restores after an edit, on a copy of the built pipeline, and
what the MLflow store shows afterwards: the scores of the current outputs, nothing twice.
The tests build on each other, in file order (one copy for the module)."""
import json
import re
import sqlite3
import subprocess

import pytest
import yaml

from conftest import copy_repo, dvc, store_client, write_params
from mnistgen.data import sha256_file

pytestmark = pytest.mark.slow


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(built_pipeline, tmp_path_factory):
    return copy_repo(built_pipeline, tmp_path_factory.mktemp("reruns") / "repo")


def store_counts(repo) -> dict:
    """Rows of every MLflow table a rerun could add to."""
    with sqlite3.connect(repo / "mlflow.db") as con:
        return {table: con.execute(f"select count(*) from {table}").fetchone()[0]
                for table in ("runs", "metrics", "params", "tags", "model_versions", "logged_models")}


def outs_of(lock_text: str) -> dict:
    """{path: md5} of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load(lock_text)
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def gan_run_shows_current_scores(repo) -> None:
    """The run that trained models/gan.pt carries evaluate's current GAN row."""
    from mnistgen.tracking.registry import find_training_run

    client = store_client(repo)
    run = find_training_run(client, sha256_file(repo / "models/gan.pt"))
    row = json.loads((repo / "metrics/evaluate.json").read_text())["rows"]["gan"]
    assert {k: run.data.metrics[f"final/{k}"] for k in row} == row


def test_second_repro_changes_nothing_in_dvc_or_the_store(repo):
    before = store_counts(repo)
    result = dvc(repo, "repro")
    output = result.stdout + result.stderr
    # only the store check runs (DVC always runs it); it finds nothing to record
    assert ran(output) == {"sync_mlflow"}
    assert "already shows the current outputs" in output
    assert store_counts(repo) == before


def repro_train_gan_with(repo, changes: dict):
    """`dvc repro train_gan` with train_gan's params changed, then params.yaml as it was."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    good = dict(params["train_gan"])
    params["train_gan"].update(changes)
    write_params(repo, params)
    try:
        return dvc(repo, "repro", "train_gan", check=False)
    finally:
        params["train_gan"] = good
        write_params(repo, params)


@pytest.mark.parametrize("key, value, phrase", [
    ("lr_gg", 0.1, "train_gan.lr_gg: unknown key (did you mean 'lr_g'?)"),
    ("batch_size", 1002, "train_gan.batch_size 1002 is larger than the 1000 training images"),
    ("device", "cuda:7", "train_gan.device: device 'cuda:7' requested but"),
    ("lr_g", float("nan"), "train_gan.lr_g: expected a finite number, got nan"),  # passes every bound
])
def test_bad_param_stops_with_the_key_named_and_outputs_intact(repo, key, value, phrase):
    """A typo, a batch bigger than the data, a device this machine lacks, NaN: check_params
    says so before DVC removes any of train_gan's outputs."""
    before = (repo / "dvc.lock").read_text()
    model = (repo / "models/gan.pt").read_bytes()
    result = repro_train_gan_with(repo, {key: value})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and phrase in output, output
    assert "Running stage 'train_gan'" not in output
    assert (repo / "models/gan.pt").read_bytes() == model
    assert (repo / "dvc.lock").read_text() == before


def test_editing_train_gan_reruns_only_what_depends_on_it(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train_gan"]["lr_g"] = 0.0003
    write_params(repo, params)
    result = dvc(repo, "repro")
    # check_params reruns on any edit (a second), but writes the same bytes: nothing else follows
    assert ran(result.stdout + result.stderr) == {"check_params", "train_gan", "sample", "evaluate",
                                                  "sync_mlflow"}
    gan_run_shows_current_scores(repo)


def committed_lock(repo) -> str:
    """dvc.lock of the first repro (run A), as the built pipeline committed it."""
    return subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout


def test_setting_a_param_back_restores_from_the_run_cache(repo):
    """Run A (the first repro), run B (lr_g 0.0003, the test above), then A's value again:
    DVC's run cache restores A's outputs byte for byte without training; the store adds no
    run, version or model (A's are there) and shows A's scores on A's run."""
    before = store_counts(repo)
    first = committed_lock(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train_gan"]["lr_g"] = yaml.safe_load(first)["stages"]["train_gan"]["params"][
        "params.yaml"]["train_gan"]["lr_g"]
    write_params(repo, params)
    result = dvc(repo, "repro")
    output = result.stdout + result.stderr
    assert ran(output) == {"check_params", "sync_mlflow"}, output
    for name in ("train_gan", "sample", "evaluate"):
        assert f"Stage '{name}' is cached - skipping run, checking out outputs" in output
    assert outs_of((repo / "dvc.lock").read_text()) == outs_of(first)
    after = store_counts(repo)
    for table in ("runs", "model_versions", "logged_models"):
        assert after[table] == before[table], table
    gan_run_shows_current_scores(repo)


def test_a_failure_after_dvc_removed_the_outputs_names_the_checkout_that_restores_them(repo):
    """A NaN loss only shows once training runs, after DVC removed train_gan's outputs: the
    message names `dvc checkout train_gan`, which brings back the last good model."""
    model = (repo / "models/gan.pt").read_bytes()
    result = repro_train_gan_with(repo, {"lr_d": 1e30, "lr_g": 1e30})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "non-finite loss at step" in output
    assert "`dvc checkout train_gan` restores its last good outputs" in output
    assert not (repo / "models/gan.pt").exists()
    dvc(repo, "checkout", "train_gan")
    assert (repo / "models/gan.pt").read_bytes() == model
    # only check_params (which passed on the bad values) needs its lock entry back
    result = dvc(repo, "repro")
    assert ran(result.stdout + result.stderr) == {"check_params", "sync_mlflow"}


def test_editing_a_library_module_marks_exactly_its_importers_changed(repo):
    """images.py is imported by every stage but download: `dvc status` must say so (and
    sync_mlflow, which DVC always runs, is always listed)."""
    path = repo / "mnistgen/images.py"
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        status = json.loads(dvc(repo, "status", "--json").stdout)
    finally:
        path.write_text(original)
    assert set(status) == {"check_params", "train_judge", "train_inverted", "train_gan", "sample",
                           "evaluate", "sync_mlflow"}
    assert json.loads(dvc(repo, "status", "--json").stdout) == {"sync_mlflow": ["always changed"]}


def test_an_unknown_section_is_refused_before_any_output_is_touched(repo):
    """`foo: 1` at the top of params.yaml, then an edit that reruns `sample`: check_params
    depends on the whole file, so it runs first and refuses the section in one line, while
    samples/ is still in place (it used to pass unseen until `sample` failed on it, after
    DVC had removed samples/)."""
    samples = {p.name: p.read_bytes() for p in (repo / "samples").iterdir()}
    params_text = (repo / "params.yaml").read_text()
    script = repo / "stages/sample.py"
    code = script.read_text()
    (repo / "params.yaml").write_text(params_text + "foo: 1\n")
    script.write_text(code + "\n# an edit that reruns sample\n")
    try:
        result = dvc(repo, "repro", check=False)
    finally:
        (repo / "params.yaml").write_text(params_text)
        script.write_text(code)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "unknown section 'foo'" in output, output
    assert "Running stage 'sample'" not in output
    assert {p.name: p.read_bytes() for p in (repo / "samples").iterdir()} == samples


def test_sync_repairs_a_missing_model_version_and_champion(repo):
    """What a sync_mlflow killed half-way, or a user, leaves: the GAN's run with its
    checkpoint tag but its registered version deleted (the alias goes with it), or no logged
    model, no registered model at all. The next `dvc repro` used to say "champion unchanged"
    every time; it now logs and registers what is missing, and @champion resolves again."""
    from mnistgen.tracking import registry, store

    client = store_client(repo)
    run_id = registry.find_training_run(client, sha256_file(repo / "models/gan.pt")).info.run_id
    for version in registry.registered_versions(client, "draw-mnist-cgan", run_id):
        client.delete_model_version("draw-mnist-cgan", version.version)
    output = dvc(repo, "repro").stdout
    assert f"repaired the gan run {run_id}: its version of draw-mnist-cgan was missing" in output
    assert registry.registered_versions(client, "draw-mnist-cgan", run_id)
    client.get_model_version_by_alias("draw-mnist-cgan", "champion")  # resolves (raises if not)

    experiment = client.get_run(run_id).info.experiment_id
    for model in store.logged_models(client, experiment, f"source_run_id = '{run_id}'"):
        client.delete_logged_model(model.model_id)
    client.delete_registered_model("draw-mnist-cgan")
    output = dvc(repo, "repro").stdout
    assert f"repaired the gan run {run_id}: its model was missing" in output
    assert registry.logged_model_id(client, run_id, "generator") is not None
    assert client.get_model_version_by_alias("draw-mnist-cgan", "champion").run_id == run_id
    assert "already shows the current outputs" in dvc(repo, "repro").stdout  # nothing twice
