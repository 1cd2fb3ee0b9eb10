"""Keeping the MLflow store in step with DVC's outputs: DVC's outputs are the truth, the
store their record. Run after every stage (the `sync_mlflow` stage, which DVC always runs),
whatever DVC ran, skipped or restored from its run cache, it makes the store show:

- a training run for every checkpoint in the workspace, found by its sha256; a checkpoint
  no run in this store wrote (`dvc pull`, a fresh store) gets a run recorded from what DVC
  holds: its params, curves, final digits and model, tagged `mnistgen.recorded`;
- evaluate's scores of the current outputs on each generator's training run and its
  logged model (`final/*`), and on the pipeline run;
- `@champion` by the rule of mnistgen.registry.promote_champion.

Keyed by checkpoint sha256 and written only where the store differs, so a second
`dvc repro` adds no run, version or metric.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistgen import naming, registry
from mnistgen.data import sha256_file
from mnistgen.runs import pipeline_parent, run_tags
from mnistgen.outbox import dataset_input
from mnistgen.scoring import final_metrics, score_metrics

OUTPUTS_TAG = "mnistgen.outputs"  # on a pipeline run: digest of the outputs it shows scores of
RECORDED_TAG = "mnistgen.recorded"  # on a run recorded from DVC's outputs, not trained here


@dataclass
class Workspace:
    """The DVC outputs the store must show (paths as declared in dvc.yaml)."""
    data: Path
    judge: Path
    inverted: Path
    gan: Path
    samples: Path
    figures: Path
    gan_losses: Path
    gan_quality: Path
    inverted_losses: Path
    judge_metrics: Path
    scores: Path

    def checkpoints(self) -> dict[str, tuple[str, Path]]:
        """{name: (stage, path)}: the judge, each inverted variant, the GAN."""
        found = {"judge": ("train_judge", self.judge)}
        for path in sorted(Path(self.inverted).glob("*.pt")):
            found[f"inverted_{path.stem}"] = ("train_inverted", path)
        found["gan"] = ("train_gan", self.gan)
        return found


def reconcile(client, experiment_id: str, ws: Workspace) -> list[str]:
    """Bring the store in step with `ws`; returns one line per thing it had to do."""
    shas = {name: sha256_file(path) for name, (_, path) in ws.checkpoints().items()}
    runs = {name: registry.find_training_run(client, sha) for name, sha in shas.items()}
    summary = json.loads(Path(ws.scores).read_text())
    state = outputs_digest(shas, Path(ws.scores).read_bytes())
    missing = [name for name, run in runs.items() if run is None]
    parent = pipeline_parent(client, experiment_id, create=False)
    if parent is None and (missing or not _pipeline_shows(client, experiment_id, state)):
        parent = pipeline_parent(client, experiment_id, create=True)  # None when run by hand
    done = []
    for name in missing:
        stage, path = ws.checkpoints()[name]
        runs[name] = record_from_outputs(client, experiment_id, parent, ws=ws, name=name,
                                         stage=stage, path=path, sha=shas[name])
        done.append(f"recorded {name} from DVC's outputs (no run in this store trained it): "
                    f"run {runs[name].info.run_id}")
    done += _scores_on_training_runs(client, runs, ws=ws, summary=summary, shas=shas)
    if parent is not None and _scores_on_pipeline_run(client, parent, summary, state):
        done.append(f"scores on the pipeline run {parent}")
    outcome = registry.promote_champion(client, shas["gan"], judge_sha256=shas["judge"],
                                        registered_name=registry.REGISTERED)
    if "already" not in outcome:
        done.append(outcome)
    return done


def outputs_digest(shas: dict[str, str], scores: bytes) -> str:
    """What identifies the outputs a pipeline run shows: checkpoints and their scores."""
    text = json.dumps(shas, sort_keys=True) + hashlib.sha256(scores).hexdigest()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pipeline_shows(client, experiment_id: str, state: str) -> bool:
    """Whether a pipeline run of this experiment name (or of plain `dvc repro`s) already
    shows the scores of exactly these outputs."""
    exp_name = os.environ.get("DVC_EXP_NAME") or ""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{OUTPUTS_TAG}` = '{state}'")
    return any(r.data.tags.get("dvc_exp_name", "") == exp_name for r in runs)


def _scores_on_training_runs(client, runs: dict, *, ws: Workspace, summary: dict,
                             shas: dict) -> list[str]:
    done = []
    rows, sources = summary["rows"], sample_sources(ws.samples)
    for name, run in runs.items():
        if name == "judge":
            accuracy = json.loads(Path(ws.judge_metrics).read_text())["test_accuracy"]
            metrics = {"final/test_accuracy": accuracy}
        elif name in rows and sources.get(name) == shas[name]:  # scored these very bytes
            metrics = final_metrics(rows, name)
        else:
            continue
        if registry.record_scores(client, client.get_run(run.info.run_id), metrics,
                                  judge_sha256=shas["judge"]):
            done.append(f"final scores on the {name} run {run.info.run_id}")
    return done


def _scores_on_pipeline_run(client, parent: str, summary: dict, state: str) -> bool:
    from mlflow.entities import Metric, RunTag

    run = client.get_run(parent)
    metrics = score_metrics(summary["rows"])
    if run.data.tags.get(OUTPUTS_TAG) == state and all(run.data.metrics.get(k) == v for k, v in metrics.items()):
        return False
    now = int(time.time() * 1000)
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(OUTPUTS_TAG, state)])
    return True


def sample_sources(samples: Path) -> dict[str, str]:
    """{row name: sha256 of the checkpoint its samples came from} of <samples>/*.npz."""
    sources = {}
    for path in sorted(Path(samples).glob("*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            sources[path.stem] = str(npz["checkpoint_sha256"])
    return sources


# ---------------------------------------------------------------- runs recorded from outputs


def record_from_outputs(client, experiment_id: str, parent: str | None, *, ws: Workspace,
                        name: str, stage: str, path: Path, sha: str):
    """A FINISHED run standing for a checkpoint DVC holds but no run here trained: the
    params it was trained with (from the checkpoint), its curves (from the plots), its final
    digits, the dataset and the model (registered, for the GAN), under `parent`."""
    from mlflow.entities import Param

    from mnistgen.runtime import load_checkpoint

    kind = {"train_judge": "judge", "train_inverted": "inverted", "train_gan": "gan"}[stage]
    params = dict(load_checkpoint(path, kind).get("params") or {})
    variant = params.pop("variant", None)
    committed = (naming.committed_params(Path.cwd()) or {}).get(stage)
    run_name = naming.run_name(stage, params=params, baseline=committed, variant=variant,
                               experiment=os.environ.get("DVC_EXP_NAME"))
    tags = {**run_tags(stage), "dvc_stage": stage, "checkpoint_sha256": sha,
            "data_sha256": sha256_file(ws.data),
            RECORDED_TAG: "from DVC's outputs (dvc pull, a run-cache restore or a new store): "
                          "not trained by a run in this store",
            "mlflow.note.content": f"Recorded from DVC's outputs: `{path}` (sha256 {sha[:12]}) "
                                   f"was not trained by a run in this store. Params are those "
                                   f"saved in the checkpoint; curves come from the stage's plots."}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    logged = naming.flat({**params, "variant": variant} if variant else params)
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in logged.items()])
    _log_curves(client, run_id, curves(ws, name=name, params=params))
    picture = final_picture(ws, name=name, path=path)
    if picture is not None:
        client.log_image(run_id, picture, artifact_file="final_digits.png")
    client.log_inputs(run_id, datasets=[dataset_input({"name": "mnist", "digest": sha256_file(ws.data)[:32],
                                                        "context": "training",
                                                        "path": str(Path(ws.data).resolve())})])
    record = {"kind": kind, "name": _model_name(name), "checkpoint": Path(path).name,
              "registered": registry.REGISTERED if kind == "gan" else None}
    registry.deliver_model(client, run_id, record, Path(path).parent)
    client.set_terminated(run_id, "FINISHED")
    return client.get_run(run_id)


def _model_name(name: str) -> str:
    """The logged model's name, as the training stages log it."""
    return {"judge": "judge", "gan": "generator"}.get(name, name)


def curves(ws: Workspace, *, name: str, params: dict) -> list[tuple[str, int, float]]:
    """(metric, step, value) of a model's training curves, read from the stage's plots."""
    from mnistgen.gan_monitor import quality_keys

    out = []
    if name == "gan":
        for row in _csv(ws.gan_losses):
            out += [("train/loss_d", int(row["step"]), float(row["loss_d"])),
                    ("train/loss_g", int(row["step"]), float(row["loss_g"]))]
        keys = quality_keys(params["eval_samples"])
        for row in _csv(ws.gan_quality):
            out += [(keys[column], int(row["step"]), float(row[column])) for column in keys]
    elif name.startswith("inverted_"):
        variant = name[len("inverted_"):]
        out += [("train/loss_per_image", int(row["step"]), float(row[variant]))
                for row in _csv(ws.inverted_losses) if row.get(variant)]
    return out


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _log_curves(client, run_id: str, points: list[tuple[str, int, float]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, step, value in points]
    for i in range(0, len(metrics), 900):  # log_batch takes at most 1,000 metrics
        client.log_batch(run_id, metrics=metrics[i:i + 900])


def final_picture(ws: Workspace, *, name: str, path: Path) -> np.ndarray | None:
    """The final digits a training run shows: the GAN's grid from `sample`, an inverted
    generator's ten digits drawn from its checkpoint; none for the judge."""
    if name == "gan":
        from PIL import Image

        with Image.open(Path(ws.figures) / "grid_gan.png") as image:
            return np.asarray(image.convert("L"))
    if name.startswith("inverted_"):
        from mnistgen.generators import load_inverted
        from mnistgen.inverted import digits_picture

        return digits_picture(load_inverted(path).model)
    return None
