"""Which shapes question types can a base model learn from a given fine-tuning budget?

    python -m benchmarks.learnability --base models/base [--types color,shape,count] [--samples 2000]
        [--turns 2,4] [--epochs 3] [--batch-size 32] [--lr 0.003] [--single color,shape]
        [--single-share 0.3] [--eval-per-type 60] [--image-size 32] [--seed 0] [--json out.json]

Fine-tunes a copy of ``--base`` on *clean*, freshly generated shapes conversations of the chosen
question types (``selfilter.data.shapes.QUESTION_TYPES``; no imperfections, training layouts
only), with the pipeline's own ``finetune`` loop, then answers held-out-layout questions of each
type greedily, prompted as lmms-eval's ``llava_hf`` prompts, and prints each type's accuracy next
to always giving its most common answer. Types in ``--single`` are asked about one-object scenes
(a ``--single-share`` of the conversations). This is the tool behind docs/TESTBED.md: it tells
whether the embedded testbed's calibration can pass before a 10-minute ``make run`` is spent on
it (the calibration's per-type check needs every benchmark type to beat that baseline).
"""
from __future__ import annotations

import argparse
import random
import time
from collections import Counter

import torch


def _scene(rng: random.Random, image_size: int, max_objects: int, *, single: bool, held_out: bool):
    from selfilter.data.shapes import sample_split_scene

    return sample_split_scene(rng, image_size, 1 if single else rng.randint(1, max_objects), held_out=held_out)


def make_training_set(types, single, *, n, turns, single_share, image_size, max_objects, seed):
    """``n`` clean conversations as ``(conversations, PIL image)``."""
    from selfilter.data.shapes import QUESTION_TYPES, render_scene, short, to_conversations

    rng = random.Random(f"{seed}:learnability:train")
    multi = [t for t in types if t not in single] or list(types)
    out = []
    while len(out) < n:
        one = bool(single) and rng.random() < single_share
        objs = _scene(rng, image_size, max_objects, single=one, held_out=False)
        qas, seen = [], set()
        for _ in range(rng.randint(*turns)):
            qa = QUESTION_TYPES[rng.choice(single if one else multi)](objs, rng)
            if qa and qa[0] not in seen:
                seen.add(qa[0])
                qas.append((short(qa[0]), qa[1]))
        if qas:
            out.append((to_conversations(qas), render_scene(objs, image_size)))
    return out


def make_eval_set(types, single, *, per_type, image_size, max_objects, seed):
    """``(qtype, question, answer, image)`` on held-out layouts; answers cycle through the
    type's values as in the benchmark (``selfilter.data.shapes.balanced_question``)."""
    from selfilter.data.shapes import balanced_question, render_scene, short

    rng = random.Random(f"{seed}:learnability:eval")
    rows = []
    for t in types:
        def draw(t=t):
            return _scene(rng, image_size, max_objects, single=t in single, held_out=True)

        for k in range(per_type):
            objs, (question, answer) = balanced_question(t, k, draw, rng)
            rows.append((t, short(question), answer, render_scene(objs, image_size)))
    return rows


def main(argv: list[str] | None = None) -> int:
    from selfilter.data.shapes import QUESTION_TYPES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="models/base", help="LLaVA checkpoint folder to start from")
    p.add_argument("--types", default="color,shape,size,position,count,exist,relation",
                   help=f"comma-separated question types (valid: {', '.join(QUESTION_TYPES)})")
    p.add_argument("--single", default="", help="types asked about one-object scenes")
    p.add_argument("--single-share", type=float, default=0.3)
    p.add_argument("--samples", type=int, default=2000, help="training conversations")
    p.add_argument("--turns", default="2,4", help="questions per conversation: min,max")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-per-type", type=int, default=60)
    p.add_argument("--image-size", type=int, default=32, help="must match the base's data (data.shapes.image_size)")
    p.add_argument("--max-objects", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    types = [t for t in a.types.split(",") if t]
    single = [t for t in a.single.split(",") if t]
    unknown = sorted(set(types + single) - set(QUESTION_TYPES))
    if unknown:
        p.error(f"unknown question types {unknown}; valid: {', '.join(QUESTION_TYPES)}")
    turns = tuple(int(x) for x in a.turns.split(","))
    torch.set_num_threads(a.threads)

    from selfilter.data.encode import ChatEncoder
    from selfilter.models.loading import load_vlm
    from selfilter.models.pretrain import normalise_answer, short_answer_exact_match
    from selfilter.training.finetune import finetune
    from selfilter.training.loop import make_accelerator

    model, processor = load_vlm(a.base)
    encoder = ChatEncoder(processor)
    train = make_training_set(types, single, n=a.samples, turns=turns, single_share=a.single_share,
                              image_size=a.image_size, max_objects=a.max_objects, seed=a.seed)
    items = [{**encoder.encode(conv, image), "index": i} for i, (conv, image) in enumerate(train)]
    steps = max(1, round(a.epochs * len(items) / a.batch_size))
    t0 = time.perf_counter()
    result = finetune(model, items, encoder.pad_token_id, accelerator=make_accelerator("cpu"), num_steps=steps,
                      lr=a.lr, batch_size=a.batch_size, seed=a.seed, progress=True, group_by_length=False)
    train_s = time.perf_counter() - t0

    rows, evalset = {}, make_eval_set(types, single, per_type=a.eval_per_type, image_size=a.image_size,
                                      max_objects=a.max_objects, seed=a.seed)
    for t in types:
        qs = [(image, question, answer) for qt, question, answer, image in evalset if qt == t]
        accuracy, _ = short_answer_exact_match(model, processor, qs, max_new_tokens=4, progress=False)
        majority, count = Counter(normalise_answer(answer) for _, _, answer in qs).most_common(1)[0]
        rows[t] = {"accuracy": round(accuracy, 3), "majority": round(count / len(qs), 3),
                   "majority_answer": majority, "n": len(qs), "beats_majority": accuracy > count / len(qs)}
    report = {"base": a.base, "steps": steps, "train_s": round(train_s, 1),
              "final_loss": round(result.log[-1]["loss"], 4) if result.log else None,
              "args": vars(a), "types": rows}
    print(f"{'type':<12} {'acc':>6} {'majority':>9}  n   ({steps} steps, {train_s:.0f} s)")
    for t, r in rows.items():
        flag = "" if r["beats_majority"] else "   <- not above the baseline"
        print(f"{t:<12} {r['accuracy']:>6.3f} {r['majority']:>9.3f} {r['n']:>3}{flag}")
    if a.json:
        from selfilter.io import write_json

        write_json(a.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
