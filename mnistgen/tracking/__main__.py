"""python -m mnistgen.tracking: send the MLflow records a tracking outage held back in
.mlflow-outbox/ (to MLFLOW_TRACKING_URI, else the local store)."""
from __future__ import annotations

import argparse
import sys

from mnistgen.errors import one_line
from mnistgen.tracking.outbox import OUTBOX, send_waiting, waiting
from mnistgen.tracking.recorder import HANDLERS
from mnistgen.tracking.store import TrackingError, check_store, repo_root, tracking_uri


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnistgen.tracking", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    uri = tracking_uri()
    if not waiting(repo_root()):
        print(f"outbox: nothing waiting for {uri}")
        return 0
    try:
        check_store(uri)
        sent, waits = send_waiting(repo_root(), uri, HANDLERS)
    except TrackingError as err:
        print(f"outbox: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - the store's own error, in one line
        print(f"outbox: error: could not send to {uri} ({one_line(err)}); the journals stay in "
              f"{OUTBOX}/ for the next try", file=sys.stderr)
        return 1
    if waits:
        print(f"outbox: error: {uri} did not take {len(waits)} journal(s) ({waits[0]}); they stay in "
              f"{OUTBOX}/ for the next try" + (f"; sent {len(sent)}" if sent else ""), file=sys.stderr)
        return 1
    left = len(waiting(repo_root()))
    print(f"outbox: sent the records of {len(sent)} run(s) to {uri}"
          + (f"; {left} journal(s) of another store or a running stage left" if left else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
