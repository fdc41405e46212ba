"""The held-out split of the user's own records as lmms-eval tasks of this project.

A benchmark for any LLaVA-format dataset (issue 17): the records of ``heldout.jsonl`` (ingested
records, never selectable) become two lmms-eval tasks in ``evaluation/tasks/heldout/``:

- ``selfilter_heldout_ll`` (``output_type: loglikelihood``): every held-out record with an image;
  context = its first human turn (the image + question), continuation = the first gpt answer.
  Metrics ``answer_nll`` (mean per-token negative log-likelihood of the reference answer, lower is
  better) and ``answer_prob`` = exp(-answer_nll) (the geometric-mean probability per answer
  token, in [0, 1], higher is better). Even a tiny model that never gets an answer exactly right
  moves this score when its training data changes.
- ``selfilter_heldout_short`` (``generate_until``): the records whose first answer has at most
  ``max_short_words`` words; greedy generation scored by ``exact_match`` and ``token_f1`` on
  normalised words (:func:`selfilter.evaluation.metrics.normalize_answer`).

Text-only records (no ``image``) are left out of both: the tasks are visual questions (the
model class prompts ``<image>\\n{question}``), and the counts say how many were left out.

The question is the first human turn with the ``<image>`` placeholder removed, wherever it
stood (LLaVA puts it first or last): lmms-eval's ``llava_hf`` puts ``<image>\\n`` in front of it,
as the shapes tasks and lmms-eval's own tasks are prompted.

As :mod:`selfilter.evaluation.bench` does for the shapes tasks, :func:`build_heldout_datasets`
writes one local parquet file per task (the image embedded as a ``datasets.Image``) and returns
``{task: path}``, the ``data_files`` that :class:`selfilter.evaluation.lmms.LmmsEvaluator` hands
lmms-eval. Everything else here is pure.

The log-likelihood needs the project's model class ``selfilter_llava_hf``
(:mod:`selfilter.evaluation.llava_model`): lmms-eval 0.7.3's built-in ``llava_hf`` raises on it
with transformers 5 and, with older transformers, scores the tail of the question too.
"""
from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from selfilter.data.records import IMAGE_PLACEHOLDER
from selfilter.evaluation import metrics as M
from selfilter.io import read_jsonl, write_json

LL_TASK = "selfilter_heldout_ll"
SHORT_TASK = "selfilter_heldout_short"
HELDOUT_TASKS = (LL_TASK, SHORT_TASK)
DEFAULT_MAX_SHORT_WORDS = 5


# --------------------------------------------------------------------------- scores (pure)

def token_f1(prediction: Any, answer: Any) -> float:
    """F1 of the normalised words of ``prediction`` against ``answer`` (bag of words, SQuAD-style:
    each shared word counts as often as it occurs in both). Two empty answers score 1."""
    pred, ref = M.normalize_answer(prediction).split(), M.normalize_answer(answer).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: Any, answer: Any) -> float:
    """1.0 when the normalised words are equal ("Red." == "red"; "Three" == "3")."""
    return M.exact_match(prediction, answer)


def parse_loglikelihood(response: Any) -> tuple[float, bool]:
    """``(nll, is_greedy)`` from what a log-likelihood task's ``process_results`` receives.

    lmms-eval 0.7.3 passes every model output through ``unwrap_generation_output``, which turns
    anything but text into ``str(output)``: the model's ``(6.19..., False)`` arrives as the
    string ``"(6.19..., False)"``. ``repr`` of a float round-trips exactly, so parsing it back
    loses nothing; a tuple (a later lmms-eval) is taken as is.
    """
    value = ast.literal_eval(response) if isinstance(response, str) else response
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"expected a log-likelihood result (nll, is_greedy), got {response!r}")
    return float(value[0]), bool(value[1])


def mean_nll(values: Iterable[float]) -> float:
    """``answer_nll`` of a task: the mean over documents of each answer's per-token NLL (every
    held-out record weighs the same, however long its answer)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan")
    return sum(values) / len(values)


def prob_of_nll(values: Iterable[float]) -> float:
    """``answer_prob`` of a task: exp(-``answer_nll``). The mean NLL is taken first and then
    exponentiated (not the mean of per-record probabilities), so the two reported numbers are
    one quantity on two scales: they always rank checkpoints the same way, and
    answer_prob == exp(-answer_nll) holds for the aggregates as for one record."""
    return math.exp(-mean_nll(values))


# --------------------------------------------------------------------------- documents (pure)

def first_exchange(record: dict[str, Any]) -> tuple[str, str] | None:
    """(question, answer) of a record: its first human turn, ``<image>`` removed and stripped,
    and the first gpt turn after it; None when there is no such pair."""
    conv = record.get("conversations") or []
    for i, turn in enumerate(conv):
        if turn.get("from") == "human":
            question = re.sub(r"\s*" + re.escape(IMAGE_PLACEHOLDER) + r"\s*", " ", turn["value"]).strip()
            for later in conv[i + 1:]:
                if later.get("from") == "gpt":
                    return question, later["value"]
            return None
    return None


def answer_token_count(tokenizer, question: str, answer: str) -> int:
    """How many tokens the model scores for ``answer`` after ``question``: the tokens of the
    assistant turn as the checkpoint's chat template renders it (the answer and its end-of-turn
    token), i.e. the full conversation's tokens past those of the prompt with its generation
    prompt - the span ``selfilter_llava_hf`` scores. Raises when the prompt does not tokenize as
    a prefix of the full conversation (then no token span is "the answer")."""
    user = {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([user, {"role": "assistant", "content": answer}], tokenize=False)
    p_ids, f_ids = tokenizer(prompt)["input_ids"], tokenizer(full)["input_ids"]
    if not full.startswith(prompt) or f_ids[:len(p_ids)] != p_ids:
        raise ValueError(f"the chat template's prompt is not a token prefix of prompt + answer "
                         f"({prompt!r} vs {full!r}); cannot tell the answer's tokens")
    return len(f_ids) - len(p_ids)


def heldout_docs(records: Sequence[dict[str, Any]], tokenizer,
                 max_short_words: int = DEFAULT_MAX_SHORT_WORDS) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """The documents of the two tasks and the counts: ``(ll_docs, short_docs, counts)``.

    ``counts``: ``records`` (input), ``text_only`` and ``no_exchange`` / ``empty_answer`` (left
    out: no human turn followed by a gpt turn; an empty reference answer), and the documents
    per task. ``answer_tokens`` is counted with ``tokenizer`` - the evaluated checkpoint's - here,
    at build time, because lmms-eval hands a task's ``process_results`` only the model's score,
    never the tokenizer; the model class checks its scored span against it (a mismatch means the
    benchmark was built with another tokenizer and its NLLs would be over other tokens).
    """
    if max_short_words < 1:
        raise ValueError(f"max_short_words must be >= 1, got {max_short_words}")
    ll, short = [], []
    counts = Counter(records=len(records))
    for i, r in enumerate(records):
        if "image" not in r:
            counts["text_only"] += 1
            continue
        pair = first_exchange(r)
        if pair is None:
            counts["no_exchange"] += 1
            continue
        question, answer = pair
        if not answer.strip():
            counts["empty_answer"] += 1
            continue
        uid = r.get("uid", i)
        base = {"question_id": str(uid), "uid": int(uid), "id": str(r.get("id", "")), "image": r["image"],
                "question": question, "answer": answer.strip()}
        n_words = len(answer.split())
        ll.append({**base, "answer_words": n_words,
                   "answer_tokens": answer_token_count(tokenizer, question, answer.strip())})
        if n_words <= max_short_words:
            short.append(base)
    counts[LL_TASK], counts[SHORT_TASK] = len(ll), len(short)
    for key in ("text_only", "no_exchange", "empty_answer"):
        counts.setdefault(key, 0)
    return ll, short, dict(counts)


# --------------------------------------------------------------------------- files

def build_heldout_datasets(heldout_jsonl: str | Path, image_dir: str | Path, out_dir: str | Path,
                           tasks: Sequence[str], tokenizer_dir: str | Path,
                           max_short_words: int = DEFAULT_MAX_SHORT_WORDS) -> dict[str, Path]:
    """Build ``out_dir/<task>.parquet`` for each held-out task in ``tasks`` (others are skipped,
    as :func:`selfilter.evaluation.bench.build_bench_datasets` skips non-shapes tasks) and
    ``out_dir/heldout_counts.json`` (:func:`heldout_docs`' counts). Returns ``{task: path}``.

    ``tokenizer_dir``: a checkpoint whose processor's tokenizer and chat template are those of the
    checkpoints to evaluate (the base model's; fine-tuning keeps them).
    """
    wanted = [t for t in tasks if t in HELDOUT_TASKS]
    if not wanted:
        return {}
    from transformers import AutoProcessor

    from selfilter.evaluation.bench import write_image_parquet

    heldout_jsonl, image_dir, out_dir = Path(heldout_jsonl), Path(image_dir), Path(out_dir)
    if not heldout_jsonl.is_file():
        raise FileNotFoundError(f"{heldout_jsonl}: held-out records not found")
    records = read_jsonl(heldout_jsonl)
    for lineno, r in enumerate(records, 1):
        if "image" in r and not (image_dir / r["image"]).is_file():
            raise FileNotFoundError(f"{heldout_jsonl}:{lineno}: uid={r.get('uid')}: image not found: "
                                    f"{image_dir / r['image']}")
    tokenizer = AutoProcessor.from_pretrained(str(tokenizer_dir)).tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{tokenizer_dir}: the tokenizer has no chat template; the held-out tasks count "
                         "answer tokens the way the model's template renders them")
    ll, short, counts = heldout_docs(records, tokenizer, max_short_words)
    docs = {LL_TASK: ll, SHORT_TASK: short}
    built = {}
    for task in wanted:
        if not docs[task]:
            why = (f"no record's first answer has at most {max_short_words} words (raise "
                   "max_short_words or drop the task)" if task == SHORT_TASK else "no record with an image")
            raise ValueError(f"{heldout_jsonl}: {task} would have no documents: {why}; counts {counts}")
        built[task] = write_image_parquet(docs[task], image_dir, out_dir / f"{task}.parquet")
    write_json(out_dir / "heldout_counts.json", {**counts, "max_short_words": max_short_words})
    return built
