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


def _launch_two(script, *args) -> None:
    """Run ``script args...`` as 2 data-parallel CPU processes; fail with their stderr."""
    # accelerate's --cpu launcher needs mpirun for several processes; its torchrun launcher
    # (--multi_gpu) starts them, and Accelerator(cpu=True) then joins them over gloo.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(script), *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_cpu_processes_finish_and_agree(tiny_llava_dir, pool, tmp_path):
    from selfilter.io import write_jsonl

    root, records = pool
    write_jsonl(tmp_path / "records.jsonl", records[:24])
    (tmp_path / "run.py").write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    _launch_two(tmp_path / "run.py", tiny_llava_dir, tmp_path / "records.jsonl", root, out)
    r0, r1 = (np.load(out / f"rank{r}.npz") for r in (0, 1))
    assert int(r0["world"]) == int(r1["world"]) == 2
    assert str(r0["kind"]).endswith("MULTI_CPU") and str(r0["backend"]) == "gloo"
    assert int(r0["steps"]) == int(r1["steps"]) == 3  # ceil(24 / (4 * 2))
    np.testing.assert_allclose(r0["lm_head"], r1["lm_head"], rtol=0, atol=0)
    np.testing.assert_allclose(r0["scores"], r1["scores"], rtol=0, atol=0)
    assert (out / "checkpoint" / "train_state.json").is_file()


FINETUNE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from selfilter.data.encode import ChatEncoder, EncodedDataset
    from selfilter.io import read_jsonl
    from selfilter.models.loading import load_vlm
    from selfilter.training.finetune import finetune
    from selfilter.training.loop import make_accelerator

    model_dir, records, images, out, loss = sys.argv[1:]
    acc = make_accelerator("cpu")
    model, processor = load_vlm(model_dir)
    enc = ChatEncoder(processor, max_length=64)
    ds = EncodedDataset(read_jsonl(records), images, enc, progress=False)
    before = model.lm_head.weight.detach().clone().numpy()
    res = finetune(model, ds, enc.pad_token_id, accelerator=acc, num_steps=3, lr=3e-3, batch_size=4,
                   seed=0, progress=False, loss=loss)
    lm_head = acc.unwrap_model(model).lm_head.weight.detach().numpy()
    np.savez(f"{out}/{loss}{acc.process_index}.npz", lm_head=lm_head, moved=float(np.abs(lm_head - before).max()),
             losses=np.array([r["loss"] for r in res.log]), world=acc.num_processes)
""")


@pytest.mark.slow
def test_answer_only_fine_tune_under_ddp_keeps_the_ranks_in_step(tiny_llava_dir, pool, tmp_path):
    """The answer-only loss is a module around the model, so DDP wraps the whole loss: both
    ranks end with the same weights (gradients synchronised), which moved, and the losses
    match the full-logits path's to float rounding."""
    from selfilter.io import write_jsonl

    root, records = pool
    write_jsonl(tmp_path / "records.jsonl", records[:24])
    (tmp_path / "run.py").write_text(FINETUNE_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    for loss in ("answer_only", "full_logits"):
        _launch_two(tmp_path / "run.py", tiny_llava_dir, tmp_path / "records.jsonl", root, out, loss)
    a0, a1, f0 = (np.load(out / name) for name in ("answer_only0.npz", "answer_only1.npz", "full_logits0.npz"))
    assert int(a0["world"]) == 2
    np.testing.assert_array_equal(a0["lm_head"], a1["lm_head"])
    assert float(a0["moved"]) > 0
    np.testing.assert_allclose(a0["losses"], f0["losses"], rtol=1e-4)
    np.testing.assert_allclose(a0["lm_head"], f0["lm_head"], rtol=1e-3, atol=1e-5)
