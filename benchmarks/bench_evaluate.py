"""Evaluate stage: batched generation against lmms-eval's own one-question loop, same checkpoints.

    python -m benchmarks.bench_evaluate [--workspace .] [--batch-size 16] [--only METHOD/RUN ...]

Runs the pipeline's evaluate stage twice in ``--workspace`` (after ``dvc repro finetune``), each
into its own folder under ``--out``: once with ``evaluate.batch_size: 1`` - ``llava_hf``'s own
``generate_until``, one question per ``generate`` call, the reference - and once with
``--batch-size``. Both runs see the same checkpoints, tasks, workers and threads; only the batch
size differs. Reported (one JSON line, and a markdown row): wall seconds of each, the speed-up,
how many responses of the reference the batched run reproduces exactly (every task's
``samples_<task>.jsonl``), how many metric values differ, the CPU (model and ISA flags), its
load. The runs' own outputs stay under ``--out`` for inspection.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


def _evaluate(ws: Path, params: dict, batch_size: int, out: Path, only: list[str]) -> float:
    params = json.loads(json.dumps(params))
    params["evaluate"]["batch_size"] = batch_size
    cfg = out.with_suffix(".params.yaml")
    cfg.write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "-m", "stages.evaluate", "--params", str(cfg), "--runs", "runs", "--pool", "data/pool",
           "--image-dir", params["data"]["image_dir"], "--out", str(out)]
    cmd += [x for o in only for x in ("--only", o)] or ["--base", "models/base"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ws, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def compare(reference: Path, batched: Path) -> dict:
    """Responses and metric values of ``batched`` that differ from ``reference``'s."""
    n = same = 0
    for f in sorted(reference.rglob("samples_*.jsonl")):
        ref = {r["doc_id"]: r["filtered_resps"] for r in map(json.loads, f.read_text().splitlines())}
        new = {r["doc_id"]: r["filtered_resps"] for r in
               map(json.loads, (batched / f.relative_to(reference)).read_text().splitlines())}
        n += len(ref)
        same += sum(new.get(k) == v for k, v in ref.items())
    metrics = differ = 0
    for f in sorted(reference.rglob("metrics.json")):
        ref, new = json.loads(f.read_text()), json.loads((batched / f.relative_to(reference)).read_text())
        for k, v in ref.items():
            if isinstance(v, (int, float)):
                metrics += 1
                differ += new.get(k) != v
    return {"responses": n, "responses_equal": same, "metric_values": metrics, "metric_values_differ": differ}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--workspace", default=".", help="a pipeline workspace after `dvc repro finetune`")
    p.add_argument("--batch-size", type=int, default=16, help="questions per generate call of the batched run")
    p.add_argument("--only", action="append", default=[], metavar="METHOD/RUN",
                   help="evaluate only these checkpoints (repeatable); default: every run and the base model")
    p.add_argument("--out", default=".cache/bench_evaluate", help="folder for both runs' outputs")
    args = p.parse_args(argv)

    from selfilter.machine import cpu_description

    ws = Path(args.workspace).resolve()
    if not (ws / "runs").is_dir():
        raise SystemExit(f"bench_evaluate: {ws / 'runs'} not found - run `dvc repro finetune` in {ws} first")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    out = (ws / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    ref_s = _evaluate(ws, params, 1, out / "batch1", args.only)
    new_s = _evaluate(ws, params, args.batch_size, out / f"batch{args.batch_size}", args.only)
    row = {"batch_size": args.batch_size, "reference_s": round(ref_s, 1), "batched_s": round(new_s, 1),
           "speedup": round(ref_s / new_s, 2), **compare(out / "batch1", out / f"batch{args.batch_size}"),
           "workers": params["evaluate"]["workers"], "torch_threads": params["evaluate"]["torch_threads"],
           "dtype": params["evaluate"]["dtype"], "cpu": cpu_description(),
           "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    print(json.dumps(row))
    print(f"| {row['cpu']} | {row['dtype']} | {row['workers']} x {row['torch_threads']} | {row['reference_s']} | "
          f"{row['batched_s']} (batch {row['batch_size']}) | {row['speedup']}x | "
          f"{row['responses_equal']} of {row['responses']} | {row['metric_values_differ']} of {row['metric_values']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
