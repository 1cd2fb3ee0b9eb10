"""Scoring rows of digits with the judge, as `evaluate` does.

Per row, on the same number of samples (`per_class` per digit): conditional accuracy,
Fréchet distance in the judge's features against real training digits (the real test row
gives the real-vs-real floor), improved precision/recall (k-NN manifolds), within-class
diversity and Classification Accuracy Score (a fresh classifier trained on the row's
digits, tested on the real test set).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistgen.classifier import accuracy, train_classifier
from mnistgen.data import DataError
from mnistgen.images import to_model_input
from mnistgen.judging import features_and_predictions
from mnistgen.metrics import RealManifold, frechet_distance, nearest_distances, within_class_diversity
from mnistgen.models import Judge, JudgeConfig
from mnistgen.params import ParamsError, RunParams, field
from mnistgen.progress import Progress
from mnistgen.runtime import set_seed
from mnistgen.transforms import CALIBRATION

REAL = "real_test"  # the row of real test digits: the floor every other row is read against


@dataclass
class EvaluateParams(RunParams):
    """params.yaml's `evaluate` section."""
    per_class: int = field(lo=10, hi=892, doc="samples per digit in every row (test has >= 892)")
    k: int = field(lo=1, hi=50, doc="neighbours for the precision/recall manifolds")
    cas_epochs: int = field(lo=1, hi=100)
    cas_batch_size: int = field(lo=1)
    cas_lr: float = field(above=0.0, hi=10.0)
    cas_channels: list[int] = field(lo=1, hi=1024)

    def check(self, section):
        super().check(section)
        rows = 10 * self.per_class  # every row's CAS classifier trains on this many digits
        if self.cas_batch_size > rows:
            raise ParamsError(f"{section}.cas_batch_size {self.cas_batch_size} is larger than the "
                              f"{rows} digits of a row (10 x per_class)")


def per_class_pick(labels: np.ndarray, per_class: int, gen: np.random.Generator) -> np.ndarray:
    """Indices of `per_class` random items of each digit, class-major."""
    picks = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ParamsError(f"evaluate.per_class {per_class} exceeds the {len(members)} "
                              f"available digits {c}")
        picks.append(np.sort(gen.choice(members, per_class, replace=False)))
    return np.concatenate(picks)


def cas_steps(n_images: int, params: EvaluateParams) -> int:
    return params.cas_epochs * (n_images // params.cas_batch_size)


def cas_config(params: EvaluateParams) -> JudgeConfig:
    """The fresh classifier CAS trains: the judge's architecture, plain input."""
    return JudgeConfig(channels=params.cas_channels, feature_dim=64, input_blur=0.0, pool="max")


def cas(*, images, labels, test_x, test_y, params: EvaluateParams, device, on_log=None) -> float:
    """Classification Accuracy Score: train on `images` only, test on real test digits.
    on_log(step, loss) is called every 10 training steps (progress)."""
    set_seed(params.seed)
    model = Judge(cas_config(params)).to(device)
    train_classifier(model=model, images=to_model_input(images), labels=torch.as_tensor(labels).long(),
                     epochs=params.cas_epochs, batch_size=params.cas_batch_size, lr=params.cas_lr,
                     weight_decay=1e-4, shift=0, device=device, seed=params.seed,
                     log_every=10, on_log=on_log)
    return accuracy(model, test_x, test_y, device)


def score_row(*, images, labels, judge, ref: dict, params, device, cas_train=None,
              on_log=None) -> tuple[dict, dict]:
    """Summary and per-class metrics of one row of samples (class-major order), against
    `ref` (see `reference`). CAS trains on the row's own digits, or on `cas_train` =
    (images, labels) when given."""
    cas_images, cas_labels = cas_train if cas_train is not None else (images, labels)
    feats, preds = features_and_predictions(judge, images)
    diversity = within_class_diversity(feats, labels)
    summary = {**judge_summary(feats, preds, labels, ref),
               "nearest_train": nearest_train(feats, ref),
               "diversity": float(np.mean(list(diversity.values()))),
               "cas": cas(images=cas_images, labels=cas_labels, test_x=ref["test_x"],
                          test_y=ref["test_y"], params=params, device=device, on_log=on_log)}
    ref_labels = np.arange(10).repeat(params.per_class)
    per_class = {str(c): {"accuracy": float((preds[labels == c] == c).mean()),
                          "frechet": frechet_distance(ref["features"][ref_labels == c], feats[labels == c]),
                          "diversity": diversity[c]} for c in range(10)}
    return summary, per_class


def judge_summary(feats, preds, labels, ref: dict) -> dict:
    """Accuracy, Fréchet distance, precision and recall of a row from its judge features
    (N, feature_dim) and predictions (N,)."""
    precision, recall = ref["manifold"].precision_recall(feats)
    return {"accuracy": float((preds == labels).mean()), "frechet": frechet_distance(ref["features"], feats),
            "precision": precision, "recall": recall}


def nearest_train(feats: np.ndarray, ref: dict) -> float:
    """Median distance (judge features) from a row's digits to their nearest training digit,
    all 60,000: a generator that copies its training digits sits closer than real test
    digits do. Repeated digits (the inverted generators draw ten) are searched once."""
    unique, back = np.unique(feats, axis=0, return_inverse=True)
    return float(np.median(nearest_distances(unique, ref["train_features"])[back.ravel()]))


def judge_scores(*, images, labels, judge, ref: dict) -> dict:
    """The judge-only part of a row's summary (no nearness, diversity or CAS)."""
    feats, preds = features_and_predictions(judge, images)
    return judge_summary(feats, preds, labels, ref)


def calibrate(*, images, labels, judge, ref: dict) -> dict:
    """The real test digits under each harmless and harmful change of mnistgen.transforms,
    scored like a generator: {change: {kind, accuracy, frechet, precision, recall}}."""
    return {name: {"kind": kind, **judge_scores(images=change(images, labels), labels=labels,
                                                judge=judge, ref=ref)}
            for name, (kind, change) in CALIBRATION.items()}


def ratios(rows: dict, name: str) -> dict:
    """A row's Fréchet distance over the real-vs-real floor, and its distance to the nearest
    training digit over real test digits' (below 1: closer to the training set than new
    real digits: copying)."""
    real = rows[REAL]
    return {"frechet_x_floor": rows[name]["frechet"] / real["frechet"],
            "nearest_train_x_real": rows[name]["nearest_train"] / real["nearest_train"]}


def score_metrics(rows: dict) -> dict:
    """MLflow metrics of every row of a summary: `<row>/<metric>` and its ratios (what
    evaluate's run and the pipeline run show)."""
    scores = {}
    for name, row in rows.items():
        scores |= {f"{name}/{k}": v for k, v in {**row, **ratios(rows, name)}.items()}
    return scores


def final_metrics(rows: dict, name: str) -> dict:
    """`final/*` metrics of one generator's row, with the real-vs-real floor beside them
    (what its training run and logged model show)."""
    return {**{f"final/{k}": v for k, v in {**rows[name], **ratios(rows, name)}.items()},
            "final/frechet_floor": rows[REAL]["frechet"]}


def rounded(obj, digits=5):
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    return round(obj, digits) if isinstance(obj, float) else obj


def generator_pick(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """The digits of a generator's samples that are scored: the same for a file whatever
    other rows exist (mnistgen.score reproduces evaluate's row with it)."""
    return per_class_pick(labels, per_class, np.random.default_rng([seed, 1]))


def sample_rows(samples_dir: Path, per_class: int, seed: int) -> tuple[dict, dict]:
    """{row name: (images, labels)} of `per_class` digits each from <samples_dir>/*.npz (the
    seed's generator, its variants, then the GAN) and {row name: checkpoint sha256}."""
    files = sorted(Path(samples_dir).glob("*.npz"),
                   key=lambda p: (p.stem != "inverted_softmax", p.stem == "gan", p.stem))
    if not files:
        raise DataError(f"{samples_dir}: no samples (*.npz); run `dvc repro sample` first")
    rows, sources = {}, {}
    for path in files:
        with np.load(path, allow_pickle=False) as npz:
            pick = generator_pick(npz["labels"], per_class, seed)
            rows[path.stem] = (npz["images"][pick], npz["labels"][pick])
            sources[path.stem] = str(npz["checkpoint_sha256"])
    return rows, sources


def reference(*, params: EvaluateParams, arrays: dict, judge) -> dict:
    """What every row is scored against, the same for evaluate and mnistgen.score:
    `per_class` real training digits per class (train_row, their judge features and k-NN
    manifold), the judge features of all training digits (nearest_train), the real test
    row, and the whole test set for CAS (test_x, test_y)."""
    gen = np.random.default_rng(params.seed)
    ref_idx = per_class_pick(arrays["train_labels"], params.per_class, gen)
    train_row = (arrays["train_images"][ref_idx], arrays["train_labels"][ref_idx].astype(np.int64))
    test_idx = per_class_pick(arrays["test_labels"], params.per_class, gen)
    features = features_and_predictions(judge, train_row[0])[0]
    return {"train_row": train_row, "features": features, "manifold": RealManifold(features, params.k),
            "train_features": features_and_predictions(judge, arrays["train_images"])[0],
            "test_row": (arrays["test_images"][test_idx], arrays["test_labels"][test_idx]),
            "test_x": to_model_input(arrays["test_images"]),
            "test_y": torch.as_tensor(arrays["test_labels"]).long()}


def evaluate(*, params: EvaluateParams, arrays: dict, judge, samples_dir: Path,
             device) -> dict:
    """{rows: summary per row, per_class: per-class metrics, sources: {row: checkpoint
    sha256}, calibration: the real test row under harmless and harmful changes} of the real
    test row and of every generator's samples, each row scored on 10 x per_class digits."""
    ref = reference(params=params, arrays=arrays, judge=judge)
    test_images, test_labels = ref["test_row"]
    calibration = calibrate(images=test_images, labels=test_labels.astype(np.int64), judge=judge,
                            ref=ref)
    rows = {REAL: ref["test_row"]}
    generated, sources = sample_rows(samples_dir, params.per_class, params.seed)
    rows.update(generated)
    summary, per_class = {}, {}
    steps = cas_steps(10 * params.per_class, params)  # CAS steps per row (10 x per_class digits)
    progress = Progress("evaluate", total=len(rows) * steps, per_step=params.cas_batch_size)
    for row, (name, (images, labels)) in enumerate(rows.items()):
        summary[name], per_class[name] = score_row(
            images=images, labels=labels.astype(np.int64), judge=judge, ref=ref, params=params,
            device=device,
            # real-data CAS trains on as many real *training* digits, never on the test set
            cas_train=ref["train_row"] if name == REAL else None,
            on_log=lambda step, loss, row=row: progress.update(row * steps + step, row=row + 1,
                                                               cas_loss=loss))
        progress.done((row + 1) * steps)
        print(f"evaluate: {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[name].items()))
    return {"rows": rounded(summary), "per_class": rounded(per_class), "sources": sources,
            "calibration": rounded(calibration)}
