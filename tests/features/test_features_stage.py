from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from stages import features as stage

ROOT = Path(__file__).resolve().parents[2]


def _params(tmp_path, clip_dir, **extra):
    keys = {"model": str(clip_dir), "batch_size": 4, "shard_size": 3, **extra}
    path = tmp_path / "params.yaml"
    path.write_text("features:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in keys.items()))
    return path


def test_stage_writes_declared_outputs(pool, clip_dir, tmp_path, caplog):
    params = _params(tmp_path, clip_dir)
    out = tmp_path / "features"
    args = ["--params", str(params), "--records", str(pool["path"]), "--image-dir", str(pool["image_dir"]),
            "--out", str(out), "--no-progress"]
    assert stage.main(args) == 0
    assert "ImageReward not available: skipped" in caplog.text
    feats = np.load(out / "clip.npy", allow_pickle=False)
    assert feats.shape[0] == 7
    assert len(pd.read_parquet(out / "scores.parquet")) == 7
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_text_truncated"], summary["n_text_only"]) == (1, 1)
    meta = json.loads((out / "clip.npy.meta.json").read_text())
    assert meta["params"]["model"] == str(clip_dir) and "records" in meta["inputs"]
    assert not (out / "shards").exists() or not any((out / "shards").iterdir())

    # Two workers then a merge give the same bytes.
    out2 = tmp_path / "features2"
    base = args[:-2] + [str(out2), "--no-progress"]
    for i in range(2):
        assert stage.main(base + ["--shard-index", str(i), "--num-shards", "2"]) == 0
    assert not (out2 / "clip.npy").exists()
    assert stage.main(base + ["--merge-only"]) == 0
    np.testing.assert_array_equal(np.load(out2 / "clip.npy"), feats)


def test_user_errors_are_one_line(pool, clip_dir, tmp_path):
    params = _params(tmp_path, clip_dir, batch_sise=3)
    proc = subprocess.run([sys.executable, "-m", "stages.features", "--params", str(params), "--records",
                           str(pool["path"]), "--image-dir", str(pool["image_dir"]), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "features.batch_sise" in proc.stderr and "Traceback" not in proc.stderr
