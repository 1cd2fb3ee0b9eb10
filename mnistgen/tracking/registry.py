"""Across runs: the models logged for MLflow's registry (in formats that load without
unpickling), scores put on the runs that trained the models, and the `champion` alias."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import mnistgen
from mnistgen.errors import one_line
from mnistgen.tracking.names import (CHAMPION, CHAMPION_METRIC, CHECKPOINT_TAG, JUDGE_TAG, NOTE_TAG,
                                     REGISTERED)

SERVING_CODE = Path(__file__).with_name("serving_model.py")  # models-from-code entry point
PACKAGE = Path(mnistgen.__file__).parent  # the code a served model carries with it


def find_training_run(client, checkpoint_sha256: str):
    """The newest FINISHED run (in any experiment) that wrote the checkpoint with this
    sha256, or None: a run killed half-way does not stand for the checkpoint."""
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs = client.search_runs(experiments, filter_string=f"tags.`{CHECKPOINT_TAG}` = '{checkpoint_sha256}' "
                                                         f"and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def shows_scores(run, metrics: dict, *, judge_sha256: str) -> bool:
    """Whether `run` already shows these evaluation metrics, scored by this judge."""
    held = run.data.metrics
    return run.data.tags.get(JUDGE_TAG) == judge_sha256 and all(held.get(k) == v for k, v in metrics.items())


def deliver_scores(client, run_id: str, record: dict, path: Path | None) -> None:
    """An outbox `scores` record: evaluation metrics on the run that trained the model and
    on the models it logged, so the UI's compare view and model page show params, curves,
    images and scores together; tagged with the judge that scored them."""
    from mlflow.entities import Metric, RunTag

    run = client.get_run(run_id)
    model_ids = [m.model_id for m in (run.outputs.model_outputs if run.outputs else [])] or [None]
    client.log_batch(run_id, metrics=[Metric(k, float(v), record["t"], 0, model_id=model_id)
                                      for k, v in record["metrics"].items() for model_id in model_ids],
                     tags=[RunTag(JUDGE_TAG, record["judge"])])


def source_tags(client, sources: dict) -> dict:
    """Tags for the (evaluate) run that scored `sources` ({row: checkpoint sha256}): the run
    id and checkpoint sha256 of every row, and links to them in its description."""
    lines, tags = ["Scored:"], {}
    for name, sha in sources.items():
        found = find_training_run(client, sha)
        tags[f"scored.{name}.checkpoint_sha256"] = sha
        if found is None:
            lines.append(f"- {name}: checkpoint sha256 {sha[:12]} (no training run found)")
        else:
            tags[f"scored.{name}.run_id"] = found.info.run_id
            link = f"#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}"
            lines.append(f"- {name}: [{found.info.run_name}]({link}), checkpoint sha256 {sha[:12]}")
    return {**tags, NOTE_TAG: "\n".join(lines)}


def champion_decision(client, run_id: str, score: float, *, judge_sha256: str,
                      registered_name: str = REGISTERED, alias: str = CHAMPION,
                      key: str = CHAMPION_METRIC) -> tuple[str | None, str]:
    """Whether `alias` should point at the registered version trained by `run_id`, which
    scored `score` on `key` (lower is better): yes when it beats the current champion or
    there is none. Scores compare only under one judge (the same generator measured
    5.9x-9.8x the floor by equally good judges, docs/experiments.md), so a champion scored by
    another judge is replaced: the new version is the only one measured by the judge in use.
    -> (the version to point the alias at, or None; what was decided, for the log)."""
    from mlflow.exceptions import MlflowException

    versions = registered_versions(client, registered_name, run_id)
    if not versions:
        return None, f"no registered version of {registered_name} from run {run_id}; {alias} unchanged"
    new = max(versions, key=lambda v: int(v.version))
    try:
        current = client.get_model_version_by_alias(registered_name, alias)
    except MlflowException:  # no champion yet
        current = None
    if current is not None and current.version == new.version:
        return None, f"{registered_name} v{new.version} is already @{alias}"
    was = ""
    if current is not None:
        try:
            champion_run = client.get_run(current.run_id).data
        except MlflowException:  # its run was deleted
            champion_run = None
        best = champion_run.metrics.get(key) if champion_run else None
        same_judge = champion_run is not None and champion_run.tags.get(JUDGE_TAG) == judge_sha256
        if best is not None and same_judge and not score < best:
            return None, (f"{registered_name} v{new.version}: Fréchet {score:.2f}x the floor does not "
                          f"beat @{alias} v{current.version} ({best:.2f}x); {alias} unchanged")
        was = (f" (was v{current.version})" if same_judge or best is None else
               f" (was v{current.version}, scored by another judge: not comparable)")
    return new.version, f"{registered_name} v{new.version} is now @{alias}{was}: Fréchet {score:.2f}x the floor"


def deliver_alias(client, run_id: str, record: dict, path: Path | None) -> None:
    """An outbox `alias` record: point a registered model's alias at a version."""
    client.set_registered_model_alias(record["name"], record["alias"], record["version"])


# ---------------------------------------------------------------- logging models


def deliver_model(client, run_id: str, record: dict, checkpoint: Path) -> None:
    """An outbox `model` record: the checkpoint it kept, logged to run_id in a format that
    loads without unpickling anything (and registered when the record says so):
    - kind "gan": a pyfunc from code (tracking/serving_model.py + the checkpoint, which
      loads with weights_only=True), taking {digit, count, seed} rows (tracking.serving);
    - kind "judge" / "inverted": the torch module exported with torch.export (pt2).
    Sent twice (a resend after a crash, a repair), it logs and registers once: a READY
    model of that name in the run is kept, a version of it is not made again."""
    import mlflow
    from mlflow.models import Model

    from mnistgen.runtime import CheckpointError, load_checkpoint
    from mnistgen.tracking.outbox import DamagedRecord

    name, kind = record["name"], record["kind"]
    try:  # a checkpoint cut short in the journal would be logged as a model that never loads
        load_checkpoint(checkpoint, kind)
    except CheckpointError as err:
        raise DamagedRecord(f"model record: {one_line(err, 120)}") from err
    # MLflow files a logged model under the active experiment, not its run's: set it
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    _drop_unfinished_models(client, run_id, name)  # a send an outage cut short
    model_id = logged_model_id(client, run_id, name)
    if model_id is None and kind == "gan":
        import mlflow.pyfunc
        import torch

        from mnistgen.tracking import serving

        model_id = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                             python_model=str(SERVING_CODE), artifacts={"checkpoint": str(checkpoint)},
                             code_paths=[str(PACKAGE)], signature=serving.signature(),
                             input_example=serving.EXAMPLE,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "pandas",
                                               "numpy"]).model_id
    elif model_id is None:
        model_id = _log_exported(run_id, name=name, kind=kind, checkpoint=checkpoint).model_id
    if record.get("registered") and not registered_versions(client, record["registered"], run_id):
        register(client, record["registered"], model_id, run_id)


def logged_model_id(client, run_id: str, name: str) -> str | None:
    """The READY model `name` that run_id logged, or None."""
    from mnistgen.tracking.store import logged_models, model_status

    run = client.get_run(run_id)
    ready = [m for m in logged_models(client, run.info.experiment_id, f"source_run_id = '{run_id}'")
             if m.name == name and model_status(m) == "READY"]
    return ready[-1].model_id if ready else None


def registered_versions(client, registered_name: str, run_id: str) -> list:
    """The versions of `registered_name` made from run_id's models."""
    return client.search_model_versions(f"name = '{registered_name}' and run_id = '{run_id}'")


def _log_exported(run_id: str, *, name: str, kind: str, checkpoint: Path):
    """A judge or inverted generator rebuilt from its checkpoint, logged as torch.export's
    pt2 (weights and graph, no pickle), with its signature and an input example."""
    import mlflow.pytorch
    import torch
    from mlflow.models import Model, infer_signature

    from mnistgen.models import build
    from mnistgen.runtime import load_checkpoint

    payload = load_checkpoint(checkpoint, kind)
    model = build(kind, payload["config"])
    model.load_state_dict(payload["state"]["model"])
    model.eval()
    if kind == "judge":  # (N, 1, 28, 28) in [-1, 1]
        example = np.linspace(-1, 1, 4 * 784, dtype=np.float32).reshape(4, 1, 28, 28)
    else:  # one-hot digits (10, 10)
        example = np.eye(10, dtype=np.float32)
    with torch.no_grad():
        output = model(torch.as_tensor(example)).numpy()
    return Model.log(artifact_path=None, name=name, flavor=mlflow.pytorch, run_id=run_id,
                     pytorch_model=model, serialization_format="pt2",
                     signature=infer_signature(example, output), input_example=example,
                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


def _drop_unfinished_models(client, run_id: str, name: str) -> None:
    """Logged models of this run and name that never became READY (an upload cut short)."""
    from mnistgen.tracking.store import drop_model, logged_models, model_status

    run = client.get_run(run_id)
    for model in logged_models(client, run.info.experiment_id, f"source_run_id = '{run_id}'"):
        if model.name == name and model_status(model) != "READY":
            drop_model(client, model)


def register(client, registered_name: str, model_id: str, run_id: str) -> str:
    """A new version of `registered_name` from the logged model (the registered model made
    and described if new); both descriptions say where they come from. -> the version."""
    from mlflow.exceptions import MlflowException

    from mnistgen.tracking import serving

    try:
        client.create_registered_model(registered_name, description=serving.DESCRIPTION)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(registered_name, source=f"models:/{model_id}",
                                          run_id=run_id, model_id=model_id)
    run = client.get_run(run_id)
    client.update_model_version(registered_name, version.version,
                                description=f"from run '{run.info.run_name}' ({run_id})")
    return version.version
