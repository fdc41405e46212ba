"""lmms-eval glue for the held-out split of the user's own data (``selfilter_heldout_*``).

Documents are rows of the local parquet files that ``selfilter.evaluation.heldout.
build_heldout_datasets`` writes from ``heldout.jsonl``: ``question`` (the first human turn,
``<image>`` removed), ``answer`` (the first gpt turn), ``image`` (a ``datasets.Image``), and for
the log-likelihood task ``answer_tokens`` (the answer's token count under the evaluated
checkpoint's tokenizer and chat template). The scoring functions live in
``selfilter.evaluation.heldout`` (pure, unit-tested).
"""
from selfilter.evaluation import heldout as H


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def doc_to_target(doc):
    return doc["answer"]


# ---------------------------------------------------------------- selfilter_heldout_ll

def ll_process_results(doc, results):
    # lmms-eval's loglikelihood convention (every model of its models/simple, and
    # selfilter_llava_hf): (mean NLL per continuation token, is_greedy), which lmms-eval 0.7.3
    # hands over as a string (parse_loglikelihood). The model scores exactly the answer's
    # doc["answer_tokens"] tokens (it checks), so the value is the answer's per-token NLL; both
    # metrics carry it and aggregate differently.
    nll, _ = H.parse_loglikelihood(results[0])
    return {"answer_nll": nll, "answer_prob": nll}


def aggregate_nll(items):
    return H.mean_nll(items)


def aggregate_prob(items):
    """exp(-mean NLL): the mean is taken over records first, then exponentiated."""
    return H.prob_of_nll(items)


# ---------------------------------------------------------------- selfilter_heldout_short

def short_process_results(doc, results):
    prediction = results[0]
    return {"exact_match": H.exact_match(prediction, doc["answer"]),
            "token_f1": H.token_f1(prediction, doc["answer"])}


def aggregate_mean(items):
    items = list(items)
    return sum(items) / len(items) if items else 0.0
