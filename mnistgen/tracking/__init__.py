"""The recording layer: everything that writes to MLflow (the store, run names, the
outage-proof outbox, runs, the registry, the served model, keeping the store in step with
DVC's outputs).

Code here can change no output of the pipeline, so no stage lists it as a DVC dependency
and nothing in mnistgen/ outside this package imports it (tests/test_dvc_deps.py checks
both): editing it reruns nothing, and `sync_mlflow`, which DVC always runs, records with
the edited code. It imports the domain (models, checkpoints, scores), never the reverse.

    python -m mnistgen.tracking      # send what a tracking outage held back
"""
