"""The registered model `draw-mnist-cgan`: ask it for digits by name.

    model = mlflow.pyfunc.load_model("models:/draw-mnist-cgan@champion")
    images = model.predict(pd.DataFrame([{"digit": 7, "count": 16, "seed": 0}]))

Input rows: `digit` 0-9, optional `count` (default 1, at most 1,000) and `seed` (default 0,
at most 2**31 - 1), each a whole number (not a string, not true/false); at most 10,000
digits per request (split a bigger one).
Output: uint8 (N, 28, 28), N = the sum of the counts, rows in input order; each row's noise
comes from its own seed, so the same request gives the same digits. The raw tensor form
stays available: `model.unwrap_python_model().packed` is a torch module taking float
(N, 10 + latent) = [one-hot digit | noise] and returning (N, 784) in [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mnistgen.generators import MAX_COUNT, MAX_SEED, MAX_TOTAL, draw
DESCRIPTION = ("Class-conditional GAN generator for MNIST digits (draw-mnist pipeline). Input: rows "
               "{digit: 0-9, count: optional, default 1, seed: optional, default 0}, whole numbers, "
               "at most 10,000 digits a request; output: uint8 "
               "(N, 28, 28), N = the sum of the counts, in input order. Raw form: "
               "unwrap_python_model().packed takes float (N, 10 + latent) = [one-hot | noise] "
               "and returns (N, 784) in [0, 1]. Alias `champion`: the best generator by "
               "evaluate's final scores.")


class RequestRefused(MlflowException, ValueError):
    """A request the model refuses, as the project's one line naming the bad row: what an
    HTTP client of `mlflow models serve` reads as the message (status 400). MLflow's scoring
    server wraps any other error in "an unexpected error while evaluating the model" with a
    stack trace, and puts an echo of the whole request before an MlflowException's message;
    this one's message is the line alone."""

    def __init__(self, line: str):
        self.line = line
        super().__init__(line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self.line

    @message.setter
    def message(self, value: str) -> None:  # the server's echo of the request: not kept
        pass


def requests(frame: pd.DataFrame) -> list[tuple[int, int, int]]:
    """(digit, count, seed) per row, checked; RequestRefused (a ValueError) names the bad row. One rule for the
    three columns: a whole number (an int, or a float with nothing after the point, as
    pandas holds a column with gaps); strings and true/false are refused."""
    if "digit" not in frame.columns:
        raise RequestRefused(f"each row needs a 'digit' (0-9); got columns {list(frame.columns)}")
    out = []
    for i, row in enumerate(frame.to_dict("records")):
        values = {key: whole_number(row.get(key), key=key, default=default, lo=lo, hi=hi, row=i)
                  for key, default, lo, hi in (("digit", None, 0, 9), ("count", 1, 1, MAX_COUNT),
                                               ("seed", 0, 0, MAX_SEED))}
        out.append((values["digit"], values["count"], values["seed"]))
    total = sum(count for _, count, _ in out)
    if total > MAX_TOTAL:
        raise RequestRefused(f"this request asks for {total:,} digits; at most {MAX_TOTAL:,} per request "
                         f"(split it)")
    return out


def whole_number(value, *, key: str, default, lo: int, hi: int, row: int) -> int:
    missing = value is None or (isinstance(value, float) and np.isnan(value))
    if missing and default is not None:
        return default
    integral = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating))
                                                        and not missing and float(value).is_integer())
    if missing or isinstance(value, (bool, np.bool_)) or not integral or not lo <= int(value) <= hi:
        raise RequestRefused(f"row {row}: {key} must be a whole number in {lo}..{hi}, got {value!r}")
    return int(value)


class DigitDrawer(mlflow.pyfunc.PythonModel):
    """Rebuilt from the pipeline's checkpoint (weights + config), logged as an artifact."""

    def load_context(self, context):
        from mnistgen.generators import load_gan
        from mnistgen.models import PackedGenerator

        self.drawer = load_gan(Path(context.artifacts["checkpoint"]))
        self.packed = PackedGenerator(self.drawer.model)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        pictures = [draw(self.drawer, digit=d, count=c, seed=s) for d, c, s in requests(frame)]
        return np.concatenate(pictures) if pictures else np.zeros((0, 28, 28), np.uint8)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import AnyType

    # any type, not long: in a batch where some rows leave count/seed out, pandas holds the
    # column as floats (NaN for missing), which a long column refuses; `requests` checks all
    # three by one rule
    inputs = Schema([ColSpec(AnyType(), "digit"), ColSpec(AnyType(), "count", required=False),
                     ColSpec(AnyType(), "seed", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype("uint8"), (-1, 28, 28))]))


EXAMPLE = pd.DataFrame({"digit": [7, 3], "count": [2, 1], "seed": [0, 0]})
