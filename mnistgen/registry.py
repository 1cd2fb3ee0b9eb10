"""Across runs: scores of evaluate put on the runs that trained the models, links between
them, the models logged for MLflow's registry and the `champion` alias."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mnistgen.tracking import store_lock, tracking_uri


def find_training_run(checkpoint_sha256: str):
    """The newest run (in any experiment) that wrote the checkpoint with this sha256, or None."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string=f"tags.checkpoint_sha256 = '{checkpoint_sha256}'",
                              order_by=["attributes.start_time DESC"], max_results=1,
                              output_format="list")
    return runs[0] if runs else None


JUDGE_TAG = "final/judge_sha256"  # which judge scored a training run's final/* metrics


def log_to_training_run(checkpoint_sha256: str, metrics: dict, *, judge_sha256: str) -> bool:
    """Put evaluation metrics on the run that trained the model (and on the model it logged),
    so the UI's compare view and model page show params, curves, images and scores together;
    tag the judge that scored them. False if that run is gone."""
    from mlflow.tracking import MlflowClient

    run = find_training_run(checkpoint_sha256)
    if run is None:
        return False
    client = MlflowClient(tracking_uri())
    outputs = getattr(run, "outputs", None)
    model_ids = [m.model_id for m in (outputs.model_outputs if outputs else [])] or [None]
    with store_lock(tracking_uri()):
        client.set_tag(run.info.run_id, JUDGE_TAG, judge_sha256)
        for key, value in metrics.items():
            for model_id in model_ids:
                client.log_metric(run.info.run_id, key, value, model_id=model_id)
    return True


def link_sources(sources: dict) -> None:
    """Tag the active (evaluate) run with the run id and checkpoint sha256 of every row it
    scored, and write them as links in its description."""
    import mlflow

    lines = ["Scored:"]
    for name, sha in sources.items():
        run = find_training_run(sha)
        tags = {f"scored.{name}.checkpoint_sha256": sha}
        if run is None:
            lines.append(f"- {name}: checkpoint sha256 {sha[:12]} (no training run found)")
        else:
            tags[f"scored.{name}.run_id"] = run.info.run_id
            link = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
            lines.append(f"- {name}: [{run.info.run_name}]({link}), checkpoint sha256 {sha[:12]}")
        mlflow.set_tags(tags)
    mlflow.set_tag("mlflow.note.content", "\n".join(lines))


def metric_key(name: str) -> str:
    """A row name as part of an MLflow metric key: letters, digits, _ and - only (a `/`
    would start a chart section of its own, a `.` look like a metric suffix)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name.replace("%", "pct"))


def promote_champion(checkpoint_sha256: str, *, judge_sha256: str, registered_name: str,
                     alias: str = "champion", key: str = "final/frechet_x_floor") -> str:
    """Point `alias` at the registered version trained into this checkpoint when it beats the
    current champion on `key` (lower is better), or when there is none. Scores compare only
    under one judge (the same generator measured 5.9x-9.8x the floor by equally good judges,
    docs/experiments.md), so a champion scored by another judge is replaced: the new version
    is the only one measured by the judge in use. Returns what it did, for the log."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    run = find_training_run(checkpoint_sha256)
    versions = client.search_model_versions(f"name = '{registered_name}' and run_id = '{run.info.run_id}'")
    if not versions:
        return f"no registered version of {registered_name} from run {run.info.run_id}; {alias} unchanged"
    new = max(versions, key=lambda v: int(v.version))
    score = client.get_run(run.info.run_id).data.metrics[key]
    try:
        current = client.get_model_version_by_alias(registered_name, alias)
    except MlflowException:  # no champion yet
        current = None
    if current is not None and current.version == new.version:
        return f"{registered_name} v{new.version} is already @{alias}"
    was = ""
    if current is not None:
        try:
            champion_run = client.get_run(current.run_id).data
        except MlflowException:  # its run was deleted
            champion_run = None
        best = champion_run.metrics.get(key) if champion_run else None
        same_judge = champion_run is not None and champion_run.tags.get(JUDGE_TAG) == judge_sha256
        if best is not None and same_judge and not score < best:
            return (f"{registered_name} v{new.version}: Fréchet {score:.2f}x the floor does not beat "
                    f"@{alias} v{current.version} ({best:.2f}x); {alias} unchanged")
        was = (f" (was v{current.version})" if same_judge or best is None else
               f" (was v{current.version}, scored by another judge: not comparable)")
    with store_lock(tracking_uri()):
        client.set_registered_model_alias(registered_name, alias, new.version)
    return f"{registered_name} v{new.version} is now @{alias}{was}: Fréchet {score:.2f}x the floor"


def log_model(model, *, name: str, example: np.ndarray, registered_name: str | None = None) -> None:
    """Log a torch model with its signature and an input example; the package travels along
    (code_paths) so the pickled model loads anywhere. Pinned requirements: no inference pass."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.as_tensor(example)).numpy()
    mlflow.pytorch.log_model(
        model, name=name, serialization_format="pickle",
        signature=infer_signature(example, output), input_example=example,
        code_paths=[str(Path(__file__).parent)], pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        registered_model_name=registered_name)


def log_digit_model(checkpoint: Path, *, name: str, registered_name: str) -> None:
    """Log the GAN as a pyfunc that takes {"digit", "count", "seed"} rows (mnistgen.serving),
    register it, and describe the registered model and this version."""
    import mlflow
    import torch

    from mnistgen import serving

    info = mlflow.pyfunc.log_model(
        name=name, python_model=serving.DigitDrawer(), artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(Path(__file__).parent)], signature=serving.signature(),
        input_example=serving.EXAMPLE, registered_model_name=registered_name,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "pandas", "numpy"])
    client = mlflow.tracking.MlflowClient()
    client.update_registered_model(registered_name, description=serving.DESCRIPTION)
    if info.registered_model_version is not None:
        run = mlflow.active_run()
        client.update_model_version(registered_name, str(info.registered_model_version),
                                    description=f"from run '{run.info.run_name}' ({run.info.run_id})")
