"""Every name the recording layer writes into the store and reads back, defined once:
the experiment, the registered model, run tags, and how each stage's checkpoint is logged."""
from __future__ import annotations

from dataclasses import dataclass

EXPERIMENT = "draw-mnist"  # one experiment for every run
REGISTERED = "draw-mnist-cgan"  # the registered model (the GAN's generator)
CHAMPION = "champion"  # its alias: the best version by evaluate's scores
CHAMPION_METRIC = "final/frechet_x_floor"  # what the alias is decided on (lower is better)

# images of a training run
GRID_IMAGE = "digits"  # the image series: a grid of digits from step 0 to the end
FINAL_PICTURE = "final_digits.png"  # the final grid, a plain file the compare view shows

# tags of a stage's run
STAGE_TAG = "dvc_stage"
EXP_NAME_TAG = "dvc_exp_name"
GIT_TAG = "git_commit"
CHECKPOINT_TAG = "checkpoint_sha256"  # which output the run trained: the key to find it again
DATA_TAG = "data_sha256"
ERROR_TAG = "error"  # why a run ended FAILED or KILLED
RECORDED_TAG = "mnistgen.recorded"  # recorded from DVC's outputs, not trained in this store
JOURNAL_TAG = "mnistgen.journal"  # what a damaged outbox journal lost of the run
JUDGE_TAG = "final/judge_sha256"  # which judge scored the run's final/* metrics
# which process holds a run open: tells a dead one from a live one
HOST_TAG, PID_TAG, PID_STARTED_TAG = "mnistgen.host", "mnistgen.pid", "mnistgen.pid_started"
# tags of a pipeline (parent) run
INVOCATION_TAG = "mnistgen.invocation"  # which dvc process it stands for
ROLE_TAG = "mnistgen.role"
OUTPUTS_TAG = "mnistgen.outputs"  # digest of the outputs whose scores it shows
# MLflow's own
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
SOURCE_COMMIT_TAG = "mlflow.source.git.commit"


@dataclass(frozen=True)
class LoggedModel:
    """How a training stage's checkpoint is logged: the checkpoint's kind, the logged
    model's name in its run, and the registered model it becomes a version of (or None)."""
    kind: str
    name: str
    registered: str | None = None


def logged_model(stage: str, variant: str | None = None) -> LoggedModel:
    """The one place that says which model each training stage logs."""
    if stage == "train_judge":
        return LoggedModel("judge", "judge")
    if stage == "train_inverted":
        return LoggedModel("inverted", f"inverted_{variant}")
    if stage == "train_gan":
        return LoggedModel("gan", "generator", REGISTERED)
    raise ValueError(f"stage {stage!r} logs no model")
