"""Stage-1 co-training under ``accelerate launch`` with 2 CPU processes (gloo)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.io import read_jsonl
    from selfilter.models.loading import load_vlm
    from selfilter.training.loop import make_accelerator
    from selfilter.training.stage1 import cotrain

    model_dir, records, images, out = sys.argv[1:]
    acc = make_accelerator("cpu")
    model, processor = load_vlm(model_dir)
    enc = ChatEncoder(processor, max_length=64)
    ds = EncodedDataset(read_jsonl(records), images, enc, progress=False)
    feats = np.random.RandomState(0).uniform(-1, 1, (len(ds), 3)).astype(np.float32)
    res = cotrain(model, ds, feats, enc.pad_token_id, accelerator=acc, epochs=1, lr=3e-3, batch_size=4,
                  checkpoint_dir=out, checkpoint_every=2, progress=False)
    lm_head = acc.unwrap_model(model).lm_head.weight.detach().numpy()
    np.savez(f"{out}/rank{acc.process_index}.npz", scores=res.raw_scores, lm_head=lm_head,
             world=acc.num_processes, steps=res.train.step, kind=str(acc.distributed_type),
             backend=str(acc.state.backend))
""")


@pytest.mark.slow
def test_two_cpu_processes_finish_and_agree(tiny_llava_dir, pool, tmp_path):
    from selfilter.io import write_jsonl

    root, records = pool
    write_jsonl(tmp_path / "records.jsonl", records[:24])
    (tmp_path / "run.py").write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    # accelerate's --cpu launcher needs mpirun for several processes; its torchrun launcher
    # (--multi_gpu) starts them, and Accelerator(cpu=True) then joins them over gloo.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(tmp_path / "run.py"), str(tiny_llava_dir), str(tmp_path / "records.jsonl"), str(root), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (np.load(out / f"rank{r}.npz") for r in (0, 1))
    assert int(r0["world"]) == int(r1["world"]) == 2
    assert str(r0["kind"]).endswith("MULTI_CPU") and str(r0["backend"]) == "gloo"
    assert int(r0["steps"]) == int(r1["steps"]) == 3  # ceil(24 / (4 * 2))
    np.testing.assert_allclose(r0["lm_head"], r1["lm_head"], rtol=0, atol=0)
    np.testing.assert_allclose(r0["scores"], r1["scores"], rtol=0, atol=0)
    assert (out / "checkpoint" / "train_state.json").is_file()
