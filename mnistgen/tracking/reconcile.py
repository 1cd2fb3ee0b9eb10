"""Keeping the MLflow store in step with DVC's outputs: DVC's outputs are the truth, the
store their record. Run after every stage (the `sync_mlflow` stage, which DVC always runs),
whatever DVC ran, skipped or restored from its run cache, it makes the store show:

- a training run for every checkpoint in the workspace, found by its sha256; a checkpoint
  no run in this store wrote (`dvc pull`, a fresh store) gets a run recorded from what DVC
  holds, through a Recorder as a stage records its own: its params (from the checkpoint),
  curves (from the plots), final digits and model, tagged `mnistgen.recorded`;
- evaluate's scores of the current outputs on each generator's training run and its
  logged model (`final/*`), and on the pipeline run;
- `@champion` by the rule of registry.champion_decision.

Keyed by checkpoint sha256 and written only where the store differs, so a second
`dvc repro` adds no run, version or metric. Every write goes through the outbox: an outage
leaves it in .mlflow-outbox/ for the next `dvc repro` or `python -m mnistgen.tracking`.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistgen.classifier import TEST_ACCURACY
from mnistgen.data import sha256_file
from mnistgen.gan_monitor import read_curves
from mnistgen.inverted import LOSS_METRIC, read_curve
from mnistgen.runtime import load_checkpoint
from mnistgen.sampling import grid_path
from mnistgen.scoring import final_metrics, score_metrics
from mnistgen.tracking import registry
from mnistgen.tracking.names import (CHAMPION, CHAMPION_METRIC, NOTE_TAG, OUTPUTS_TAG, RECORDED_TAG,
                                     REGISTERED, STAGE_TAG, EXP_NAME_TAG, logged_model)
from mnistgen.tracking.outbox import Outbox
from mnistgen.tracking.recorder import HANDLERS, Recorder, describe
from mnistgen.tracking.runs import pipeline_parent, stage_run
from mnistgen.tracking.settings import TrackingParams
from mnistgen.tracking.store import repo_root

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

    def checkpoints(self) -> dict[str, tuple[str, str | None, Path]]:
        """{row name: (stage, variant, path)}: the judge, each inverted variant, the GAN."""
        found = {"judge": ("train_judge", None, self.judge)}
        for path in sorted(Path(self.inverted).glob("*.pt")):
            variant = load_checkpoint(path, "inverted")["config"]["output"]
            found[logged_model("train_inverted", variant).name] = ("train_inverted", variant, path)
        found["gan"] = ("train_gan", None, self.gan)
        return found


def reconcile(client, experiment_id: str, ws: Workspace, settings: TrackingParams) -> list[str]:
    """Bring the store in step with `ws`; returns one line per thing it had to do."""
    checkpoints = ws.checkpoints()
    shas = {name: sha256_file(path) for name, (_, _, path) in checkpoints.items()}
    runs = {name: registry.find_training_run(client, sha) for name, sha in shas.items()}
    summary = json.loads(Path(ws.scores).read_text())
    state = outputs_digest(shas, Path(ws.scores).read_bytes())
    missing = [name for name, run in runs.items() if run is None]
    parent = pipeline_parent(client, experiment_id, create=False)
    if parent is None and (missing or not _pipeline_shows(client, experiment_id, state)):
        parent = pipeline_parent(client, experiment_id, create=True)  # None when run by hand
    done = []
    for name in missing:
        stage, variant, path = checkpoints[name]
        run_id = record_from_outputs(client, experiment_id, ws=ws, stage=stage, variant=variant,
                                     path=path, settings=settings)
        runs[name] = client.get_run(run_id)
        done.append(f"recorded {name} from DVC's outputs (no run in this store trained it): "
                    f"run {run_id}")
    repaired = _repair(client, runs, checkpoints, settings)
    done += repaired.values()
    sync = Outbox(root=repo_root(), uri=client.tracking_uri, run_id=f"sync-{uuid.uuid4().hex}",
                  handlers=HANDLERS)
    done += _scores_on_training_runs(sync, runs, ws=ws, summary=summary, shas=shas, again=set(repaired))
    if parent is not None and _scores_on_pipeline_run(sync, client.get_run(parent), summary, state):
        done.append(f"scores on the pipeline run {parent}")
    score = final_metrics(summary["rows"], "gan")[CHAMPION_METRIC]
    version, outcome = registry.champion_decision(client, runs["gan"].info.run_id, score,
                                                  judge_sha256=shas["judge"])
    if version is not None:
        sync.put("alias", name=REGISTERED, alias=CHAMPION, version=version)
    if "already" not in outcome:
        done.append(outcome)
    left = sync.close(settings.outage_wait)
    if left:
        done.append(f"{client.tracking_uri} did not take {describe(left)} ({sync.problem or 'no answer'}); "
                    f"they wait in {sync.folder.relative_to(repo_root())}/ for the next `dvc repro` "
                    f"or `python -m mnistgen.tracking`")
    return done


def _repair(client, runs: dict, checkpoints: dict, settings: TrackingParams) -> dict[str, str]:
    """What a run found for a checkpoint must hold besides its tag: its logged model, and
    for the GAN a registered version (a sync killed half-way, a version deleted by hand).
    What is missing is logged again from the checkpoint (registry.deliver_model logs and
    registers only what is not there), delivered before the champion is decided.
    -> {row name: what was repaired}."""
    repairs = Outbox(root=repo_root(), uri=client.tracking_uri, run_id=f"sync-{uuid.uuid4().hex}",
                     handlers=HANDLERS)
    done = {}
    for name, run in runs.items():
        stage, variant, path = checkpoints[name]
        logged, run_id = logged_model(stage, variant), run.info.run_id
        no_model = registry.logged_model_id(client, run_id, logged.name) is None
        unregistered = logged.registered and not registry.registered_versions(client, logged.registered, run_id)
        if no_model or unregistered:
            repairs.put("model", run=run_id, kind=logged.kind, name=logged.name,
                        registered=logged.registered, source=path)
            what = "its model" if no_model else f"its version of {logged.registered}"
            done[name] = f"repaired the {name} run {run_id}: {what} was missing"
    left = repairs.close(settings.outage_wait)
    if left:
        done[""] = (f"{client.tracking_uri} did not take {describe(left)} ({repairs.problem or 'no answer'}); "
                    f"they wait in .mlflow-outbox/ for the next `dvc repro`")
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
    return any(r.data.tags.get(EXP_NAME_TAG, "") == exp_name for r in runs)


def _scores_on_training_runs(sync: Outbox, runs: dict, *, ws: Workspace, summary: dict,
                             shas: dict, again: set) -> list[str]:
    """evaluate's scores on each training run (and its logged models) that does not show
    them yet, or whose model was just logged again (`again`)."""
    done = []
    rows, sources = summary["rows"], sample_sources(ws.samples)
    for name, run in runs.items():
        if name == "judge":
            accuracy = json.loads(Path(ws.judge_metrics).read_text())[TEST_ACCURACY]
            metrics = {f"final/{TEST_ACCURACY}": accuracy}
        elif name in rows and sources.get(name) == shas[name]:  # scored these very bytes
            metrics = final_metrics(rows, name)
        else:
            continue
        if name in again or not registry.shows_scores(run, metrics, judge_sha256=shas["judge"]):
            sync.put("scores", run=run.info.run_id, metrics=metrics, judge=shas["judge"])
            done.append(f"final scores on the {name} run {run.info.run_id}")
    return done


def _scores_on_pipeline_run(sync: Outbox, run, summary: dict, state: str) -> bool:
    metrics = score_metrics(summary["rows"])
    if run.data.tags.get(OUTPUTS_TAG) == state and all(run.data.metrics.get(k) == v for k, v in metrics.items()):
        return False
    sync.put("metrics", run=run.info.run_id, metrics={k: float(v) for k, v in metrics.items()}, step=0)
    sync.put("tags", run=run.info.run_id, tags={OUTPUTS_TAG: state})
    return True


def sample_sources(samples: Path) -> dict[str, str]:
    """{row name: sha256 of the checkpoint its samples came from} of <samples>/*.npz."""
    sources = {}
    for path in sorted(Path(samples).glob("*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            sources[path.stem] = str(npz["checkpoint_sha256"])
    return sources


# ---------------------------------------------------------------- runs recorded from outputs


def record_from_outputs(client, experiment_id: str, *, ws: Workspace, stage: str,
                        variant: str | None, path: Path, settings: TrackingParams) -> str:
    """A FINISHED run standing for a checkpoint DVC holds but no run here trained, recorded
    as the stage records its own: the params it was trained with (from the checkpoint), its
    curves (from the plots), its final digits, the dataset and the model (registered, for
    the GAN). -> its run id."""
    logged = logged_model(stage, variant)
    params = dict(load_checkpoint(path, logged.kind).get("params") or {})
    params.pop("variant", None)
    sha = sha256_file(path)
    tags = {STAGE_TAG: stage,
            RECORDED_TAG: "from DVC's outputs (dvc pull, a run-cache restore or a new store): "
                          "not trained by a run in this store",
            NOTE_TAG: f"Recorded from DVC's outputs: `{path}` (sha256 {sha[:12]}) was not trained "
                      f"by a run in this store. Params are those saved in the checkpoint; curves "
                      f"come from the stage's plots."}
    run_id, parent = stage_run(client, experiment_id, stage=stage, params=params, variant=variant,
                               tags=tags)
    quiet = TrackingParams(system_metrics=False, system_metrics_every=settings.system_metrics_every,
                           outage_wait=settings.outage_wait)
    record = Recorder(stage=stage, variant=variant, run_id=run_id, parent=parent,
                      uri=client.tracking_uri, root=repo_root(), settings=quiet)
    for step, values in curves(ws, stage=stage, variant=variant, params=params):
        record.metrics(values, step=step)
    picture = final_picture(ws, stage=stage, path=path)
    if picture is not None:
        record.final_digits(picture)
    record.dataset(Path(ws.data))
    record.model(path)
    record.close("FINISHED")
    return run_id


def curves(ws: Workspace, *, stage: str, variant: str | None, params: dict) -> list[tuple[int, dict]]:
    """[(step, {metric: value})] of a model's training curves, read from the stage's plots
    under the names the stage logged them."""
    if stage == "train_gan":
        return read_curves(Path(ws.gan_losses), Path(ws.gan_quality), eval_samples=params["eval_samples"])
    if stage == "train_inverted":
        return [(step, {f"train/{LOSS_METRIC}": value})
                for step, value in read_curve(Path(ws.inverted_losses), variant)]
    return []


def final_picture(ws: Workspace, *, stage: str, path: Path) -> np.ndarray | None:
    """The final digits a training run shows: the GAN's grid from `sample`, an inverted
    generator's ten digits drawn from its checkpoint; none for the judge."""
    if stage == "train_gan":
        from PIL import Image

        with Image.open(grid_path(Path(ws.figures), "gan")) as image:
            return np.asarray(image.convert("L"))
    if stage == "train_inverted":
        from mnistgen.generators import load_inverted
        from mnistgen.inverted import digits_picture

        return digits_picture(load_inverted(path).model)
    return None
