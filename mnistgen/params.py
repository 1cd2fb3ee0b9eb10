"""Typed, validated sections of params.yaml.

Each stage reads its own section once with `load_section(path, "train_gan", GanParams)`.
Unknown keys (typos), missing keys, wrong types and out-of-range values raise ParamsError
naming the key, before any work is done. The schema classes hold bounds and docs but no
default values: params.yaml is the one place a default lives.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from pathlib import Path

import yaml

from mnistgen.errors import ParamsError

# the sections of params.yaml: one per stage of dvc.yaml, and `tracking` (MLflow only)
SECTIONS = ("download", "train_judge", "train_inverted", "train_gan", "sample", "evaluate", "tracking")


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does (and as DVC does): `1e-4` is a
    number, not the string YAML 1.1 makes of it; a key written twice is an error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParamsError(f"line {key_node.start_mark.line + 1}: key '{key}' is written twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_implicit_resolver(  # 1e-4, 2E+3, -1.5e-2: exponent without a dot
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def field(*, lo=None, hi=None, above=None, choices=None, doc=""):
    """A required dataclass field with validation bounds (`lo`/`hi` inclusive, `above`
    exclusive) or allowed choices. No default: the value comes from params.yaml."""
    meta = {"lo": lo, "hi": hi, "above": above, "choices": choices, "doc": doc}
    return dataclasses.field(metadata=meta)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value, tp, meta: dict):
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item_tp, meta) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # .nan passes every bound (comparisons with NaN are false)
            raise ParamsError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ParamsError(f"{key}: expected one of {list(choices)}, got {value!r}")
    lo, hi, above = meta.get("lo"), meta.get("hi"), meta.get("above")
    if above is not None and value <= above:
        raise ParamsError(f"{key}: must be > {above}, got {value!r}")
    if lo is not None and value < lo:
        raise ParamsError(f"{key}: must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ParamsError(f"{key}: must be <= {hi}, got {value!r}")
    return value


def parse_section(raw: dict | None, cls, section: str):
    """Validate a raw mapping against dataclass `cls`: every key present, none unknown."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{section}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamsError(
                f"{section}.{key}: unknown key{hint}; known keys: {', '.join(sorted(fields))}")
    missing = [name for name in fields if name not in raw]
    if missing:
        docs = "; ".join(f"{name}: {fields[name].metadata.get('doc') or _type_name(hints[name])}"
                         for name in missing)
        raise ParamsError(f"{section}: missing key{'s' * (len(missing) > 1)} "
                          f"{', '.join(missing)} ({docs}); params.yaml in the repository lists "
                          f"every key with its default")
    values = {name: _check_value(f"{section}.{name}", raw[name], hints[name], dict(f.metadata))
              for name, f in fields.items()}
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check is not None:
        check(section)
    return obj


def parse_yaml(text: str, source: str = "params.yaml"):
    """YAML text as every reader of params in this project reads it (ParamsLoader: `4e-4` is
    a number, a key written twice an error); ParamsError names `source`."""
    try:
        return yaml.load(text, Loader=ParamsLoader)
    except yaml.YAMLError as err:
        raise ParamsError(f"{source}: not valid YAML: {err}") from err
    except ParamsError as err:
        raise ParamsError(f"{source}: {err}") from None


def read_params(path: str | Path) -> dict:
    """params.yaml as a mapping of known sections (values not yet checked)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    data = parse_yaml(path.read_text(), source=str(path))
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    for name in data:
        if name not in SECTIONS:
            close = difflib.get_close_matches(str(name), SECTIONS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamsError(f"{path}: unknown section '{name}'{hint}; sections: {', '.join(SECTIONS)}")
    return data


def load_section(path: str | Path, section: str, cls):
    data = read_params(path)
    if section not in data:
        raise ParamsError(f"{path}: missing section '{section}'")
    return parse_section(data[section], cls, section)


def precision_field():
    """The `precision` key of the training sections (see mnistgen.runtime.resolve_precision)."""
    return field(choices=("auto", "fp32", "bf16"),
                 doc="bf16 mixed precision; auto = whichever measured faster on the device's kind")


@dataclasses.dataclass
class RunParams:
    """Keys every stage that computes has."""
    seed: int = field(lo=0, doc="seeds python, numpy and torch")
    device: str = field(doc="auto (cuda, else mps, else cpu), cpu, mps, cuda, cuda:N")
    threads: int = field(lo=0, hi=256, doc="torch intra-op threads; 0 = one per core")

    def check(self, section):
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            raise ParamsError(f"{section}.device: expected auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        from mnistgen.devices import pick_device  # torch, only once the spelling is right

        try:  # a device this machine lacks stops check_params, before DVC removes an output
            pick_device(self.device)
        except ParamsError as err:
            raise ParamsError(f"{section}.device: {err}") from None
        except RuntimeError as err:  # torch's own words for a malformed cuda:N
            raise ParamsError(f"{section}.device: {self.device!r} is not a device ({err})") from None

    def check_batch(self, section: str, batch_size: int, images: int) -> None:
        """A batch must fit in the training images (known before the data is there)."""
        if batch_size > images:
            raise ParamsError(f"{section}.batch_size {batch_size} is larger than the {images} "
                              f"training images")
