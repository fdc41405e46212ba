"""Check the MLflow ranking in a real browser: after `make run`, open the deep link `track`
printed (the aggregate runs, sorted by overall) in headless Chromium and confirm the aggregates
appear in the order of their overall means, best first.

    python tools/mlflow_browser_check.py                       # the repo's store and links
    python tools/mlflow_browser_check.py --screenshot /tmp/ranking.png

Starts `mlflow ui` on a free local port against the store, loads the page with
`chromium --headless --dump-dom` (Debian's `chromium` package), and compares the run names in the
rendered table with the store's own ranking (MlflowClient.search_runs ordered by overall). Exits
0 when they agree, 1 when not (printing both), 2 when Chromium or the store is missing. Not part
of `make test`: it needs Chromium and a finished pipeline.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url}: no answer within {timeout:.0f} s")


def expected_order(store: str, experiment: str, digest: str | None) -> tuple[str, list[str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"{store}: no experiment {experiment!r} (run `make run` first)")
    query = "tags.`selfilter.kind` = 'aggregate'" + (f" and tags.`selfilter.pipeline_digest` = '{digest}'" if digest else "")
    runs = client.search_runs([exp.experiment_id], query, order_by=["metrics.`overall` DESC"], max_results=1000)
    return exp.experiment_id, [r.data.tags["mlflow.runName"] for r in runs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=f"sqlite:///{REPO / 'mlruns.db'}")
    p.add_argument("--artifacts", default=str(REPO / "mlartifacts"))
    p.add_argument("--experiment", default="selfilter")
    p.add_argument("--tracking-json", default=str(REPO / "metrics" / "tracking.json"),
                   help="track's summary: the pipeline digest to look at (default: %(default)s)")
    p.add_argument("--screenshot", help="also save a PNG of the page here")
    p.add_argument("--wait-ms", type=int, default=30000, help="Chromium's virtual time budget for the page's scripts")
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        print("mlflow_browser_check: no chromium on PATH (apt install chromium)", file=sys.stderr)
        return 2
    digest = None
    if Path(args.tracking_json).is_file():
        digest = json.loads(Path(args.tracking_json).read_text()).get("pipeline_digest")
    try:
        exp_id, want = expected_order(args.store, args.experiment, digest)
    except LookupError as e:
        print(f"mlflow_browser_check: {e}", file=sys.stderr)
        return 2
    from selfilter.tracking import ui_links

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", args.store,
                               "--default-artifact-root", args.artifacts, "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"{base}/health", 180)
        url = ui_links(base, exp_id)["ranking"]
        if digest:  # only this pipeline run's aggregates, as the table below is compared with
            url = url.replace("searchFilter=", "searchFilter=" + urllib.request.quote(
                f"tags.`selfilter.pipeline_digest` = '{digest}' and ", safe=""), 1)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                 f"--virtual-time-budget={args.wait_ms}"]
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
        if args.screenshot:
            subprocess.run([chromium, *flags, f"--screenshot={args.screenshot}", url], capture_output=True, timeout=300)
    finally:
        server.terminate()
        server.wait(timeout=30)
    seen = sorted(((m.start(), name) for name in want for m in [re.search(re.escape(name), dom)] if m),
                  key=lambda t: t[0])
    got = [name for _, name in seen]
    print(f"link: {url}")
    print(f"store ranking ({len(want)} aggregates): {want}")
    print(f"page order    ({len(got)} found):      {got}")
    ok = bool(want) and got == want
    print("mlflow_browser_check: " + ("the page lists the aggregates in the store's ranking" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
