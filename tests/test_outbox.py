"""The outbox on a real SQLite store: records arrive in order with the times they were
taken; an outage delays them (the stage goes on); one past the wait leaves a journal that a
later run sends; a full store fails the stage in one line and ends the run FAILED; models
left PENDING are cleaned up. The real server and relay: tests/test_tracking_server.py."""
import sqlite3

import numpy as np
import pytest

from mnistgen.tracking import outbox, runs, store
from mnistgen.tracking.settings import TrackingParams

SETTINGS = TrackingParams(system_metrics=False, system_metrics_every=10, outage_wait=5)
REAL_DELIVER = outbox.deliver


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def client_of(repo):
    return store.open_client(f"sqlite:///{repo / 'mlflow.db'}")


def outage_for(monkeypatch, failures: int):
    """The next `failures` deliveries fail as a server that went away does."""
    left = [failures]

    def flaky(*args, **kwargs):
        if left[0] > 0:
            left[0] -= 1
            raise ConnectionError("Connection refused")
        return REAL_DELIVER(*args, **kwargs)

    monkeypatch.setattr(outbox, "deliver", flaky)
    monkeypatch.setattr(outbox, "BACKOFF_S", (0.01,))
    return left


def test_records_arrive_in_order_with_the_time_they_were_taken(repo):
    with runs.start_run(stage="train_gan", params={"lr": 0.1}, settings=SETTINGS) as record:
        for step in range(1, 6):
            record.metrics({"train/loss": 1.0 / step}, step=step)
        record.digits(np.zeros((8, 8), np.uint8), 5)
        record.tags(checkpoint_sha256="abc")
        run_id = record.run_id
    client = client_of(repo)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["checkpoint_sha256"] == "abc"
    history = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert [m.timestamp for m in history] == sorted(m.timestamp for m in history)
    assert history[-1].timestamp <= run.info.end_time
    assert not (repo / outbox.OUTBOX).exists()  # all sent: no journal left


def test_an_outage_delays_records_but_not_the_stage(repo, monkeypatch):
    left = outage_for(monkeypatch, failures=5)
    with runs.start_run(stage="train_gan", params={}, settings=SETTINGS) as record:
        record.metrics({"train/loss": 0.5}, step=1)
        record.metrics({"train/loss": 0.25}, step=2)
        run_id = record.run_id
    assert left[0] == 0  # it failed five times, then went through
    run = client_of(repo).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] == 0.25


def test_an_outage_past_the_wait_leaves_a_journal_that_the_next_run_sends(repo, monkeypatch, capsys):
    outage_for(monkeypatch, failures=10 ** 6)
    quick = TrackingParams(system_metrics=False, system_metrics_every=10, outage_wait=0)
    with runs.start_run(stage="train_gan", params={}, settings=quick) as record:
        record.metrics({"train/loss": 0.5}, step=1)
        record.digits(np.zeros((8, 8), np.uint8), 1)
        run_id = record.run_id
    line = capsys.readouterr().err.strip()
    assert "did not take 1 metric record, 1 image, 1 run end" in line and "\n" not in line
    assert run_id in store_runs_waiting(repo)
    assert client_of(repo).get_run(run_id).info.status == "RUNNING"
    # a new run does not mark it FAILED while its journal waits (its process is gone)
    monkeypatch.setattr(outbox, "deliver", REAL_DELIVER)  # the server is back
    with runs.start_run(stage="evaluate", params={}, settings=SETTINGS):
        pass  # start_run sends what waited first
    run = client_of(repo).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] == 0.5
    assert not (repo / outbox.OUTBOX).exists()


def store_runs_waiting(repo) -> set:
    return set(outbox.waiting(repo))


def test_a_full_store_fails_the_stage_and_ends_the_run_failed_without_its_model(repo, monkeypatch):
    """SQLite's 'database or disk is full' (raised here as MLflow raises it) is no outage:
    the stage stops with the store's error; when space is back, the journal is sent with
    the run ended FAILED and the model it could not log left out (its stage failed)."""
    def full(client, run_id, batch, folder, handlers):
        if batch[0]["op"] == "model":
            try:
                raise sqlite3.OperationalError("database or disk is full")
            except sqlite3.OperationalError as inner:
                raise RuntimeError("(sqlite3.OperationalError) database or disk is full") from inner
        return REAL_DELIVER(client, run_id, batch, folder, handlers)

    monkeypatch.setattr(outbox, "deliver", full)
    checkpoint = repo / "judge.pt"
    checkpoint.write_bytes(b"not used")
    with pytest.raises(store.StoreFull, match="the MLflow store's disk is full") as raised:
        with runs.start_run(stage="train_judge", params={}, settings=SETTINGS) as record:
            record.metrics({"final/test_accuracy": 0.9})
            record.model(checkpoint)
            run_id = record.run_id
    assert store.store_full(raised.value)  # one of ours: the stage runner prints one line
    monkeypatch.setattr(outbox, "deliver", REAL_DELIVER)
    with runs.start_run(stage="evaluate", params={}, settings=SETTINGS):
        pass
    run = client_of(repo).get_run(run_id)
    assert run.info.status == "FAILED" and "ran out of space" in run.data.tags["error"]
    assert run.data.metrics["final/test_accuracy"] == 0.9
    assert not run.outputs or not run.outputs.model_outputs


def test_models_left_pending_are_removed_with_their_files_unless_still_being_logged(repo):
    client = client_of(repo)
    exp = store.experiment(client)
    dead = client.create_run(exp).info.run_id
    client.set_terminated(dead, "FAILED")
    alive = client.create_run(exp).info.run_id
    stale = client.create_logged_model(exp, source_run_id=dead, name="generator")
    busy = client.create_logged_model(exp, source_run_id=alive, name="generator")
    folder = repo / "mlruns" / exp / "models" / stale.model_id / "artifacts"
    assert stale.artifact_location.endswith(f"{stale.model_id}/artifacts")
    folder.mkdir(parents=True)
    (folder / "half.bin").write_bytes(b"cut short")
    assert store.drop_unfinished_models(client, exp) == [stale.model_id]
    assert not folder.parent.exists()
    left = {m.model_id for m in client.search_logged_models([exp])}
    assert busy.model_id in left and stale.model_id not in left


def test_a_refused_record_is_skipped_in_one_line_and_the_rest_arrives(repo, monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    def refuse_tags(client, run_id, batch, folder, handlers):
        if batch[0]["op"] == "tags":
            raise MlflowException.invalid_parameter_value("value too long")
        return REAL_DELIVER(client, run_id, batch, folder, handlers)

    monkeypatch.setattr(outbox, "deliver", refuse_tags)
    with runs.start_run(stage="train_gan", params={}, settings=SETTINGS) as record:
        record.tags(note="x" * 10)
        record.metrics({"train/loss": 1.0}, step=1)
        run_id = record.run_id
    assert capsys.readouterr().err.count("MLflow refused a tags record") == 1
    run = client_of(repo).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] == 1.0


def journal_of(repo, monkeypatch, body):
    """Run `body(record)` in a run whose records all stay in the journal (the server away
    past the wait); then the server is back. -> (run id, journal folder)."""
    outage_for(monkeypatch, failures=10 ** 6)
    quick = TrackingParams(system_metrics=False, system_metrics_every=10, outage_wait=0)
    with runs.start_run(stage="train_gan", params={}, settings=quick) as record:
        body(record)
        run_id = record.run_id
    monkeypatch.setattr(outbox, "deliver", REAL_DELIVER)
    return run_id, outbox.folder_of(repo, run_id)


def five_steps_and_two_grids(record):
    for step in range(1, 6):
        record.metrics({"train/loss": float(step)}, step=step)
    record.digits(np.full((8, 8), 10, np.uint8), 1)
    record.digits(np.full((8, 8), 20, np.uint8), 2)


def image_files(client, run_id) -> list[str]:
    return sorted(f.path for f in client.list_artifacts(run_id, "images"))


def test_a_garbled_journal_line_is_skipped_by_name_and_the_rest_arrives(repo, monkeypatch, capsys):
    """A line garbled in the middle of a journal (a crash, a disk): it used to end the
    reading there, the rest lost in silence and the run never ended."""
    from mnistgen.tracking.__main__ import main

    run_id, folder = journal_of(repo, monkeypatch, five_steps_and_two_grids)
    lines = (folder / "ops.jsonl").read_text().splitlines()
    lines[2] = '{"op":"metrics","t":17#@!garbage'  # the record of step 3
    (folder / "ops.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main([]) == 0
    err = capsys.readouterr().err
    assert "journal line 3 is not a record" in err and "skipped" in err
    client = client_of(repo)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 4, 5]
    assert len(image_files(client, run_id)) == 4  # two grids, each a png and its preview
    assert "journal line 3" in run.data.tags["mnistgen.journal"]
    assert not (repo / outbox.OUTBOX).exists()


def test_a_journal_file_cut_short_is_skipped_and_blocks_no_later_run(repo, monkeypatch, capsys):
    """An image file of the journal cut short used to stop every later run from opening
    (its error taken for an outage) until the journal was deleted by hand."""
    run_id, folder = journal_of(repo, monkeypatch, five_steps_and_two_grids)
    first_grid = sorted(folder.glob("f*/array.npy"))[0]
    first_grid.write_bytes(first_grid.read_bytes()[:40])
    with runs.start_run(stage="evaluate", params={}, settings=SETTINGS) as record:
        later = record.run_id  # the later stage opens its run: start_run sent what waited
    client = client_of(repo)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and client.get_run(later).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4, 5]
    assert len(image_files(client, run_id)) == 2  # the second grid; the first was lost
    assert "array.npy cannot be read" in run.data.tags["mnistgen.journal"]
    assert "array.npy cannot be read" in capsys.readouterr().err


def test_a_resent_journal_leaves_one_of_each_record(repo, monkeypatch):
    """A crash after sending, before the `sent` count was saved (or that count damaged):
    the journal goes again, and the store keeps one grid per step, not two."""
    import shutil

    from mnistgen.tracking.__main__ import main

    run_id, folder = journal_of(repo, monkeypatch, five_steps_and_two_grids)
    copy = repo / "journal-copy"
    shutil.copytree(folder, copy)
    assert main([]) == 0
    client = client_of(repo)
    once = (image_files(client, run_id), len(client.get_metric_history(run_id, "train/loss")))
    shutil.copytree(copy, folder)
    (folder / "sent").write_text("not a number")  # everything again
    assert main([]) == 0
    assert (image_files(client, run_id), len(client.get_metric_history(run_id, "train/loss"))) == once
    assert len(once[0]) == 4


def test_a_full_disk_under_the_journal_costs_no_training(repo, monkeypatch, capsys):
    """numpy's short write (`OSError: 91204 requested and 3968 written`, no errno) on the
    journal's disk used to stop training with a 29-line traceback: the records now go from
    memory, the run ends FINISHED with every grid, and one line says what happened."""
    real_save, calls = np.save, [0]

    def short_write(path, array, **kwargs):
        calls[0] += 1
        if calls[0] >= 2:
            raise OSError("91204 requested and 3968 written")
        return real_save(path, array, **kwargs)

    monkeypatch.setattr(outbox.np, "save", short_write)
    with runs.start_run(stage="train_gan", params={}, settings=SETTINGS) as record:
        for step in (1, 2, 3):
            record.digits(np.full((8, 8), step, np.uint8), step)
            record.metrics({"train/loss": 1.0 / step}, step=step)
        run_id = record.run_id
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "91204 requested and 3968 written" in err, err
    assert "2 record(s) of run" in err and "sent from memory" in err and "lost" not in err
    client = client_of(repo)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(image_files(client, run_id)) == 6


def test_a_model_record_sent_twice_is_logged_and_registered_once(repo, tmp_path):
    """A resend or a repair of a `model` record must not log a second model or register a
    second version of the same run."""
    from mnistgen.models import GanConfig, Generator
    from mnistgen.runtime import save_checkpoint
    from mnistgen.tracking import registry

    config = dict(arch="conv", latent_dim=4, g_hidden=[8, 4], d_hidden=[4, 8, 16],
                  spectral_norm=False, conditional_bn=True)
    checkpoint = tmp_path / "gan.pt"
    save_checkpoint(checkpoint, kind="gan", models={"generator": Generator(GanConfig(**config))},
                    config=config)
    client = client_of(repo)
    run_id = client.create_run(store.experiment(client)).info.run_id
    record = {"kind": "gan", "name": "generator", "registered": "draw-mnist-cgan"}
    for _ in range(2):
        registry.deliver_model(client, run_id, record, checkpoint)
    models = store.logged_models(client, store.experiment(client), f"source_run_id = '{run_id}'")
    assert len(models) == 1
    assert len(registry.registered_versions(client, "draw-mnist-cgan", run_id)) == 1
