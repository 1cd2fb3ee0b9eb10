"""Screenshots of the MLflow UI as a user sees it, from headless Chromium (`make ui-check`).

Starts `mlflow ui` on a free local port against this repository's store, finds the
experiment, the newest two train_gan runs and their parent runs, and writes PNGs to
docs/ui/: the experiment as it opens (its runs table), the compare view of the two GAN runs,
a GAN run's charts (image chart included) and overview, and the chart view of the
pipeline (parent) runs. Needs Chromium (Debian: `apt-get install -y chromium`); not
part of `make test`.

Usage: python tools/ui_check.py [--out docs/ui] [--chromium chromium]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
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

from mnistgen.tracking.names import EXPERIMENT
from mnistgen.tracking.store import UI_WORKFLOW, tracking_uri, ui_path  # noqa: E402


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


class Browser:
    """Headless Chromium driven over its DevTools protocol (aiohttp, which MLflow already
    needs): navigate, give the page real seconds (its charts load lazily, which a plain
    `chromium --screenshot` does not wait for), then capture."""

    def __init__(self, chromium: str):
        self.port = free_port()
        self.proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                      "--hide-scrollbars", f"--remote-debugging-port={self.port}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{self.port}/json/version", 60)
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list").read())
        self.ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")

    def shoot(self, url: str, out: Path, size=(1600, 1000), seconds: float = 12) -> None:
        asyncio.run(self._shoot(url, out, size, seconds))
        print(f"ui-check: {out.name} <- {url}", flush=True)

    async def _shoot(self, url, out, size, seconds):
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                ids = iter(range(1, 10**6))

                async def call(method, **params):
                    msg_id = next(ids)
                    await ws.send_json({"id": msg_id, "method": method, "params": params})
                    async for msg in ws:
                        data = json.loads(msg.data)
                        if data.get("id") == msg_id:
                            return data.get("result", {})

                await call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                           deviceScaleFactor=1, mobile=False)
                await call("Page.navigate", url=url)
                await asyncio.sleep(seconds)
                shot = await call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(shot["data"]))

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def pages(client) -> dict:
    """{file name: URL fragment} of the views to check."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise SystemExit(f"ui-check: no experiment '{EXPERIMENT}' in {tracking_uri()}; run `make repro` first")
    eid = exp.experiment_id
    gans = client.search_runs([eid], filter_string="tags.dvc_stage = 'train_gan'",
                              order_by=["attributes.start_time DESC"], max_results=2)
    views = {"1_experiment_opens.png": (ui_path(eid), (1600, 1000))}
    if len(gans) == 2:
        ids = json.dumps([r.info.run_id for r in gans])
        views["2_compare_two_gan_runs.png"] = (f"#/compare-runs?runs={ids}&experiments="
                                               f"{json.dumps([eid])}&{UI_WORKFLOW}", (1600, 3200))
    if gans:
        run = f"#/experiments/{eid}/runs/{gans[0].info.run_id}"
        views["3_gan_run_charts.png"] = (f"{run}/model-metrics?{UI_WORKFLOW}", (1600, 3000))
        views["4_gan_run_overview.png"] = (f"{run}?{UI_WORKFLOW}", (1600, 1600))
    views["5_pipeline_runs_chart_view.png"] = (f"{ui_path(eid)}&compareRunsMode=CHART", (1600, 1400))
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
    browser = None
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for(base, 120)
        browser = Browser(args.chromium)
        for name, (fragment, size) in views.items():
            browser.shoot(base + fragment, args.out / name, size=size)
    finally:
        if browser is not None:
            browser.close()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
