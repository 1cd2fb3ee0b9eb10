"""Names a person can read for MLflow runs, and that differ when params differ.

A run is named `<stage>[:<variant>] [<DVC experiment>] <changed params> #<digest>`, e.g.
`train_gan [bushy-kiln] lr_g=0.0003 #3f2a1b`: the params that differ from the committed
params.yaml (what `dvc exp run -S` or an edit changed), and a short digest of the stage's
whole section so two runs with different params never share a name.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from mnistgen.errors import ParamsError
from mnistgen.params import parse_yaml

MAX_SHOWN = 3  # changed params spelled out in a name; more are counted


def digest(params: dict) -> str:
    """6 hex digits of the params' canonical JSON."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:6]


def flat(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changes(current: dict, baseline: dict | None) -> list[str]:
    """['lr_g=0.0003', ...]: the keys whose value differs from the baseline's (new keys too)."""
    if baseline is None:
        return []
    now, before = flat(current), flat(baseline)
    return [f"{key}={_short(value)}" for key, value in now.items()
            if key not in before or before[key] != value]


def _short(value) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list) else str(value)


def committed_params(root: Path, path: str = "params.yaml") -> dict | None:
    """params.yaml as committed at HEAD, or None (no git, no commit, not tracked)."""
    try:
        result = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=root, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    try:  # read as the stages read params.yaml: `4e-4` is the number the stage logs
        return parse_yaml(result.stdout, source=f"HEAD:{path}") or {}
    except ParamsError:
        return None


def run_name(stage: str, *, params: dict, baseline: dict | None, variant: str | None = None,
             experiment: str | None = None) -> str:
    changed = changes(params, baseline)
    if len(changed) > MAX_SHOWN:
        changed = changed[:MAX_SHOWN] + [f"+{len(changed) - MAX_SHOWN} more"]
    parts = [f"{stage}:{variant}" if variant else stage]
    if experiment:
        parts.append(f"[{experiment}]")
    parts += changed
    parts.append(f"#{digest(params)}")
    return " ".join(parts)


def metric_key(name: str) -> str:
    """A row name as part of an MLflow metric key: letters, digits, _ and - only (a `/`
    would start a chart section of its own, a `.` look like a metric suffix)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name.replace("%", "pct"))
