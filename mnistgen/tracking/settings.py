"""params.yaml's `tracking` section: what MLflow records. No stage lists it as a param, so
changing it reruns nothing (check_params validates it)."""
from __future__ import annotations

import dataclasses

from mnistgen.params import field


@dataclasses.dataclass
class TrackingParams:
    """params.yaml's `tracking` section: what MLflow records; changes no output."""
    system_metrics: bool = field(doc="CPU, memory (and GPU) of training runs, as system/* metrics")
    system_metrics_every: int = field(lo=1, hi=3600, doc="seconds between system metric samples")
    outage_wait: int = field(lo=0, hi=86400, doc="seconds a finished stage waits for an unreachable "
                                                 "tracking server before leaving the rest in .mlflow-outbox/")
