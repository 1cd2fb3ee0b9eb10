from dataclasses import fields

import pytest
import yaml

from mnistgen.params import ParamsError, load_section, parse_section
from stages.download import DownloadParams
from stages.evaluate import EvaluateParams
from stages.sample import SampleParams
from stages.train_gan import GanParams
from stages.train_inverted import InvertedParams
from stages.train_judge import JudgeParams

SECTIONS = {"download": DownloadParams, "train_judge": JudgeParams, "train_inverted": InvertedParams,
            "train_gan": GanParams, "sample": SampleParams, "evaluate": EvaluateParams}


@pytest.mark.parametrize("section", SECTIONS)
def test_repository_params_are_valid_and_complete(section):
    with open("params.yaml") as f:
        raw = yaml.safe_load(f)[section]
    params = load_section("params.yaml", section, SECTIONS[section])
    # every key is spelled out in params.yaml, so users see (and DVC tracks) all of them
    assert set(raw) == {f.name for f in fields(params)}


def test_typo_names_the_key_and_suggests_the_right_one():
    with pytest.raises(ParamsError, match=r"train_gan\.lr_gg: unknown key \(did you mean 'lr_g'\?\)"):
        parse_section({"lr_gg": 0.1}, GanParams, "train_gan")


@pytest.mark.parametrize("raw, message", [
    ({"epochs": "ten"}, r"train_gan\.epochs: expected an integer, got 'ten'"),
    ({"epochs": 2.5}, r"train_gan\.epochs: expected an integer"),
    ({"spectral_norm": 1}, r"train_gan\.spectral_norm: expected true or false"),
    ({"lr_g": "fast"}, r"train_gan\.lr_g: expected a number"),
    ({"lr_g": -0.1}, r"train_gan\.lr_g: must be > 0.0"),
    ({"lr_g": 0}, r"train_gan\.lr_g: must be > 0.0, got 0.0"),
    ({"batch_size": 1}, r"train_gan\.batch_size: must be >= 2"),
    ({"loss": "wasserstein"}, r"train_gan\.loss: expected one of \['hinge', 'bce'\]"),
    ({"g_hidden": 256}, r"train_gan\.g_hidden: expected a list of int"),
    ({"g_hidden": [256, 0]}, r"train_gan\.g_hidden\[1\]: must be >= 1"),
    ({"g_hidden": []}, r"train_gan\.g_hidden: list at least one layer width"),
    ({"device": "tpu"}, r"train_gan\.device: expected auto, cpu, cuda"),
])
def test_wrong_type_or_range_is_named(raw, message):
    with pytest.raises(ParamsError, match=message):
        parse_section(raw, GanParams, "train_gan")


def test_integers_are_accepted_for_floats_and_defaults_fill_the_rest():
    params = parse_section({"lr_g": 1}, GanParams, "train_gan")
    assert params.lr_g == 1.0 and isinstance(params.lr_g, float)
    assert params.epochs == GanParams().epochs


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
        parse_section({"variants": ["softmax", "tanh"]}, InvertedParams, "train_inverted")
    with pytest.raises(ParamsError, match="at most once"):
        parse_section({"variants": ["softmax", "softmax"]}, InvertedParams, "train_inverted")


def test_numbers_read_as_yaml_1_2_and_dvc_read_them(tmp_path):
    """PyYAML alone reads `1e-4` as a string (YAML 1.1); DVC reads it as a number."""
    path = tmp_path / "params.yaml"
    path.write_text("train_gan:\n  lr_g: 1e-4\n  lr_d: 2E+1\n  beta1: -1.5e-1\n")
    raw = yaml.safe_load(path.read_text())["train_gan"]
    assert raw["lr_g"] == "1e-4"  # what the stages used to see
    with pytest.raises(ParamsError, match="beta1: must be >= 0.0, got -0.15"):
        load_section(path, "train_gan", GanParams)
    path.write_text("train_gan:\n  lr_g: 1e-4\n  lr_d: 2E+1\n  seed: 7\n")
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
