import re
from dataclasses import fields

import pytest
import yaml

from mnistgen.params import ParamsError, load_section, parse_section
from conftest import repo_section
from mnistgen.gan import GanParams
from mnistgen.inverted import InvertedParams
from mnistgen.sections import SCHEMAS as SECTIONS
from mnistgen.sections import check_all
from mnistgen.tracking.settings import TrackingParams

RECORDING = {"tracking": TrackingParams}  # what check_params passes in


@pytest.mark.parametrize("section", SECTIONS)
def test_repository_params_are_valid_and_complete(section):
    with open("params.yaml") as f:
        raw = yaml.safe_load(f)[section]
    params = load_section("params.yaml", section, SECTIONS[section])
    # every key is spelled out in params.yaml, so users see (and DVC tracks) all of them
    assert set(raw) == {f.name for f in fields(params)}


def gan(**raw):
    """parse_section on params.yaml's train_gan with some keys changed."""
    return parse_section({**repo_section("train_gan"), **raw}, GanParams, "train_gan")


def section_text(section: str, **raw_lines: str) -> str:
    """params.yaml text of one section, with some keys written by hand (as a user types)."""
    values = {k: v for k, v in repo_section(section).items() if k not in raw_lines}
    body = yaml.safe_dump({section: values}, sort_keys=False)
    return body + "".join(f"  {key}: {text}\n" for key, text in raw_lines.items())


def test_typo_names_the_key_and_suggests_the_right_one():
    with pytest.raises(ParamsError, match=r"train_gan\.lr_gg: unknown key \(did you mean 'lr_g'\?\)"):
        gan(lr_gg=0.1)


@pytest.mark.parametrize("raw, message", [
    ({"epochs": "ten"}, r"train_gan\.epochs: expected an integer, got 'ten'"),
    ({"epochs": 2.5}, r"train_gan\.epochs: expected an integer"),
    ({"spectral_norm": 1}, r"train_gan\.spectral_norm: expected true or false"),
    ({"lr_g": "fast"}, r"train_gan\.lr_g: expected a number"),
    ({"lr_g": -0.1}, r"train_gan\.lr_g: must be > 0.0"),
    ({"lr_g": 0}, r"train_gan\.lr_g: must be > 0.0, got 0.0"),
    ({"batch_size": 1}, r"train_gan\.batch_size: must be >= 2"),
    ({"loss": "wasserstein"}, r"train_gan\.loss: expected one of \['hinge', 'bce', 'rpgan'\]"),
    ({"g_hidden": 256}, r"train_gan\.g_hidden: expected a list of int"),
    ({"g_hidden": [256, 0]}, r"train_gan\.g_hidden\[1\]: must be >= 1"),
    ({"g_hidden": []}, r"train_gan\.g_hidden: list at least one layer width"),
    ({"device": "tpu"}, r"train_gan\.device: expected auto, cpu, mps, cuda"),
])
def test_wrong_type_or_range_is_named(raw, message):
    with pytest.raises(ParamsError, match=message):
        gan(**raw)


def test_integers_are_accepted_for_floats():
    params = gan(lr_g=1)
    assert params.lr_g == 1.0 and isinstance(params.lr_g, float)


def test_a_missing_key_is_named_with_what_it_means():
    """No schema default could disagree with params.yaml: a missing key is an error."""
    raw = repo_section("train_gan")
    del raw["ema_decay"], raw["epochs"]
    with pytest.raises(ParamsError, match=r"train_gan: missing keys epochs, ema_decay "
                                          r"\(epochs: int; ema_decay: EMA of the generator"):
        parse_section(raw, GanParams, "train_gan")
    with pytest.raises(TypeError):  # and no code path can build one with hidden defaults
        GanParams()


def test_missing_file_section_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_section(tmp_path / "nope.yaml", "train_gan", GanParams)
    path = tmp_path / "params.yaml"
    path.write_text("train_judge: {}\n")
    with pytest.raises(ParamsError, match="missing section 'train_gan'"):
        load_section(path, "train_gan", GanParams)
    path.write_text("train_gan: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_section(path, "train_gan", GanParams)


def test_inverted_variants_must_be_known_and_unique():
    with pytest.raises(ParamsError, match=r"variants\[1\]: expected one of"):
        parse_section({**repo_section("train_inverted"), "variants": ["softmax", "tanh"]},
                      InvertedParams, "train_inverted")
    with pytest.raises(ParamsError, match="at most once"):
        parse_section({**repo_section("train_inverted"), "variants": ["softmax", "softmax"]},
                      InvertedParams, "train_inverted")


def test_numbers_read_as_yaml_1_2_and_dvc_read_them(tmp_path):
    """PyYAML alone reads `1e-4` as a string (YAML 1.1); DVC reads it as a number."""
    path = tmp_path / "params.yaml"
    path.write_text(section_text("train_gan", lr_g="1e-4", lr_d="2E+1", beta1="-1.5e-1"))
    raw = yaml.safe_load(path.read_text())["train_gan"]
    assert raw["lr_g"] == "1e-4"  # what the stages used to see
    with pytest.raises(ParamsError, match="beta1: must be >= 0.0, got -0.15"):
        load_section(path, "train_gan", GanParams)
    path.write_text(section_text("train_gan", lr_g="1e-4", lr_d="2E+1", seed="7"))
    params = load_section(path, "train_gan", GanParams)
    assert (params.lr_g, params.lr_d, params.seed) == (1e-4, 20.0, 7)


def test_a_key_written_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train_gan:\n  lr_g: 0.001\n  epochs: 2\n  lr_g: 0.002\n")
    with pytest.raises(ParamsError, match=r"params.yaml: line 4: key 'lr_g' is written twice"):
        load_section(path, "train_gan", GanParams)


def test_a_misspelled_section_is_refused_with_a_suggestion(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train_gan: {}\nsampel:\n  per_class: 5\n")
    with pytest.raises(ParamsError, match=r"unknown section 'sampel' \(did you mean 'sample'\?\)"):
        load_section(path, "train_gan", GanParams)


def test_cuda_on_a_machine_without_it_is_a_params_error(monkeypatch):
    """One line from the stage (ParamsError is a known error), not a traceback."""
    import torch

    from mnistgen.runtime import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError, match="device 'cuda:1' requested but CUDA is not available"):
        pick_device("cuda:1")
    assert pick_device("auto") == torch.device("cpu")


def test_check_all_validates_every_section_and_matches_dvc_yaml(tmp_path):
    from conftest import ROOT
    from mnistgen.sections import check_all

    # one section per stage that computes (check_params and sync_mlflow have no knobs), and
    # `tracking` (MLflow only); one schema per section
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]) - {"check_params", "sync_mlflow"}
    assert set(SECTIONS) == stages
    assert set(check_all(ROOT / "params.yaml", recording=RECORDING)) == stages | {"tracking"}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"]["k"] = 0  # a late section: everything before it was valid
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"evaluate\.k: must be >= 1"):
        check_all(path, recording=RECORDING)
    del params["evaluate"], params["sample"]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match="missing sections sample, evaluate"):
        check_all(path, recording=RECORDING)


def params_with(changes: dict) -> dict:
    """params.yaml with {section: {key: value}} changed."""
    from conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in changes.items():
        params[section].update(values)
    return params


# every rule a stage would only meet after DVC removed its outputs, with what check_params says
LATE_RULES = [
    ({"train_gan": {"batch_size": 60002}}, "train_gan.batch_size 60002 is larger than the 60000 training images"),
    ({"train_gan": {"train_limit": 50, "batch_size": 64}},
     "train_gan.batch_size 64 is larger than the 50 training images"),
    ({"train_judge": {"train_limit": 100, "batch_size": 128}},
     "train_judge.batch_size 128 is larger than the 100 training images"),
    ({"train_inverted": {"batch_size": 70000}}, "train_inverted.batch_size 70000 is larger than the 60000"),
    ({"evaluate": {"per_class": 10, "cas_batch_size": 101}},
     "evaluate.cas_batch_size 101 is larger than the 100 digits of a row"),
    ({"sample": {"per_class": 400}, "evaluate": {"per_class": 500}},
     "evaluate.per_class 500 is more than the 400 digits per class that sample.per_class draws"),
    ({"train_gan": {"device": "cuda"}}, "train_gan.device: device 'cuda' requested but CUDA is not available"),
    ({"evaluate": {"device": "mps"}}, "evaluate.device: device 'mps' requested but Apple's MPS is not available"),
]


@pytest.mark.parametrize("changes, message", LATE_RULES)
def test_check_params_refuses_first_what_a_stage_would_refuse_after_dvc_removed_its_outputs(
        tmp_path, monkeypatch, changes, message):
    """check_params runs before any stage, while every output is still in place."""
    import torch

    from mnistgen.sections import check_all

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params_with(changes)))
    with pytest.raises(ParamsError, match=re.escape(message)):
        check_all(path, recording=RECORDING)


def test_a_cuda_index_the_machine_lacks_is_refused(monkeypatch):
    import torch

    from mnistgen.runtime import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ParamsError, match=r"device 'cuda:3' requested but this machine has 1 CUDA"):
        pick_device("cuda:3")
    assert pick_device("cuda:0").index == 0


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN"])
def test_non_finite_numbers_are_refused(tmp_path, text):
    """Comparisons with NaN are false, so no bound refuses it: refused by name instead."""
    from conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_gan"]["lr_g"] = "LR"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params).replace("lr_g: LR", f"lr_g: {text}"))
    with pytest.raises(ParamsError, match=r"train_gan\.lr_g: expected a finite number"):
        check_all(path, recording=RECORDING)


def test_check_params_removes_a_resume_file_of_other_params_only(tmp_path):
    """train_gan stopped under other params leaves a 17 MB resume file; set those params
    back to values DVC's run cache has and train_gan never runs to clear it: check_params,
    which runs on every params edit, does. One of the current params stays."""
    import subprocess
    import sys

    import torch

    from conftest import ROOT, env_for, make_params
    from mnistgen.gan import GanState

    current, other = make_params("train_gan"), make_params("train_gan", lr_g=0.0003)
    resume = tmp_path / "train_gan.pt"

    def check_params():
        return subprocess.run([sys.executable, "-m", "stages.check_params", "--params",
                               str(ROOT / "params.yaml"), "--out", str(tmp_path / "params.txt"),
                               "--resume", str(resume)], cwd=ROOT, env=env_for(ROOT),
                              capture_output=True, text=True)

    GanState(other, torch.device("cpu")).save(resume, other.digest())
    result = check_params()
    assert result.returncode == 0 and "removed" in result.stdout and not resume.exists(), result
    GanState(current, torch.device("cpu")).save(resume, current.digest())
    result = check_params()
    assert result.returncode == 0 and "removed" not in result.stdout and resume.exists(), result
