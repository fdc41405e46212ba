"""The stage-2 benchmark runs end to end at a small size and checks its own exactness."""
import json

from benchmarks import bench_select


def test_bench_select_small_run_matches_reference(tmp_path, capsys):
    out = tmp_path / "select.json"
    rc = bench_select.main(["--features", "clusters", "--n", "3000", "--d", "32", "--budget", "300",
                            "--n-clusters", "50", "--ref-picks", "300", "--fp32-loop-picks", "5",
                            "--json", str(out)])
    assert rc == 0
    figures = json.loads(out.read_text())
    assert figures["same_picks_and_scores"] is True and figures["reference_picks_compared"] == 300
    assert figures["machine_bound_float32_s"] > 0 and figures["cpu"]
    assert "| clusters (noise 0.05) | 3,000 x 32, 300 |" in capsys.readouterr().out


def test_clip_features_tile_rows_and_columns(tmp_path):
    import numpy as np

    src = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    np.save(tmp_path / "clip.npy", src)
    x = bench_select.make_features("clip", 500, 20, 0, 0, 0.1, str(tmp_path / "clip.npy"))
    assert x.shape == (500, 20) and x.dtype == np.float32
    # every row is a noisy copy of a source row (columns repeated to reach the width)
    tiled = np.tile(src, (1, 3))[:, :20]
    nearest = np.abs(x[:, None, :] - tiled[None]).mean(axis=2).min(axis=1)
    assert nearest.max() < 0.2
