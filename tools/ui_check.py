"""Screenshots of the MLflow UI as a user sees it, from headless Chromium (`make ui-check`).

Starts `mlflow ui` on a free local port against this repository's store, finds the
experiment, the newest two train_gan runs and their parent runs, and writes PNGs to
docs/ui/: the experiment as it opens, the runs table, the compare view of the two GAN runs,
and a GAN run's image chart. Needs Chromium (Debian: `apt-get install -y chromium`); not
part of `make test`.

Usage: python tools/ui_check.py [--out docs/ui] [--chromium chromium]
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnistgen.tracking import EXPERIMENT, UI_WORKFLOW, tracking_uri, ui_path  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"ui-check: {url} did not answer in {seconds:.0f} s")


def shoot(chromium: str, url: str, out: Path, size=(1600, 1000), wait_ms: int = 20000) -> None:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={wait_ms}",
           f"--screenshot={out}", url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if not out.is_file():
        raise SystemExit(f"ui-check: chromium wrote no {out}: {result.stderr[-1000:]}")
    print(f"ui-check: {out.name} <- {url}", flush=True)


def pages(client) -> dict:
    """{file name: URL fragment} of the views to check."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise SystemExit(f"ui-check: no experiment '{EXPERIMENT}' in {tracking_uri()}; run `make repro` first")
    eid = exp.experiment_id
    gans = client.search_runs([eid], filter_string="tags.dvc_stage = 'train_gan'",
                              order_by=["attributes.start_time DESC"], max_results=2)
    views = {"1_experiment_opens.png": ui_path(eid)}
    if len(gans) == 2:
        ids = json.dumps([r.info.run_id for r in gans])
        views["2_compare_two_gan_runs.png"] = (f"#/compare-runs?runs={ids}&experiments="
                                               f"{json.dumps([eid])}&{UI_WORKFLOW}")
    if gans:
        run = f"#/experiments/{eid}/runs/{gans[0].info.run_id}"
        views["3_gan_run_charts.png"] = f"{run}/model-metrics?{UI_WORKFLOW}"
        views["4_gan_run_overview.png"] = f"{run}?{UI_WORKFLOW}"
    return views


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/ui")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or "chromium")
    args = parser.parse_args(argv)
    if not shutil.which(args.chromium):
        raise SystemExit("ui-check: Chromium not found; install it (Debian: apt-get install -y chromium)")
    from mlflow.tracking import MlflowClient

    views = pages(MlflowClient(tracking_uri()))
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port",
                               str(port), "--backend-store-uri", tracking_uri()],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for(base, 120)
        for name, fragment in views.items():
            shoot(args.chromium, base + fragment, args.out / name)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
