"""Every section of params.yaml with its schema, for checking the whole file at once (the
`check_params` stage runs before any stage that could remove outputs)."""
from __future__ import annotations

from pathlib import Path

from mnistgen.classifier import JudgeParams
from mnistgen.data import DownloadParams
from mnistgen.gan import GanParams
from mnistgen.inverted import InvertedParams
from mnistgen.params import SECTIONS, ParamsError, parse_section, read_params
from mnistgen.sampling import SampleParams
from mnistgen.scoring import EvaluateParams

# the sections the stages compute with; `tracking` (what MLflow records) has its schema in
# the recording layer, which check_params passes in: nothing here imports that layer
SCHEMAS = {"download": DownloadParams, "train_judge": JudgeParams, "train_inverted": InvertedParams,
           "train_gan": GanParams, "sample": SampleParams, "evaluate": EvaluateParams}


def check_all(path: str | Path, *, recording: dict) -> dict:
    """Every section parsed and validated: {section: params object}, or ParamsError.
    `recording`: {section: schema} of the sections only the recording layer reads."""
    schemas = {**SCHEMAS, **recording}
    assert set(schemas) == set(SECTIONS), "mnistgen.params.SECTIONS lists every schema's section"
    data = read_params(path)
    missing = [name for name in SECTIONS if name not in data]
    if missing:
        raise ParamsError(f"{path}: missing section{'s' * (len(missing) > 1)} {', '.join(missing)}")
    sections = {name: parse_section(data[name], schemas[name], name) for name in SECTIONS}
    check_across(sections)
    return sections


def check_across(sections: dict) -> None:
    """Rules between sections: evaluate scores `evaluate.per_class` of the digits `sample`
    drew per class."""
    drawn, scored = sections["sample"].per_class, sections["evaluate"].per_class
    if scored > drawn:
        raise ParamsError(f"evaluate.per_class {scored} is more than the {drawn} digits per class "
                          f"that sample.per_class draws; raise sample.per_class or lower it")
