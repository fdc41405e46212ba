"""lmms-eval glue for the embedded "shapes" benchmarks (``--include_path evaluation/tasks``).

doc -> visuals, doc -> prompt, doc + generated text -> per-document scores, and the
aggregations the task YAMLs name with ``!function utils.NAME``. The scoring itself lives in
``selfilter.evaluation.metrics`` (pure, unit-tested, shared with the comparison report);
lmms-eval runs in the project's environment, where ``selfilter`` is installed.

Documents are rows of the local parquet datasets that the ``evaluate`` stage builds from
``data/shapes/bench/*.jsonl`` (``selfilter.evaluation.bench``): the jsonl fields plus an
``image`` column of type ``datasets.Image``.
"""
from selfilter.evaluation import metrics as M


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question'].strip()}{kwargs.get('post_prompt', '')}"


# ---------------------------------------------------------------- shapes_vqa, shapes_count

def vqa_process_results(doc, results):
    score = M.exact_match(results[0], doc["answer"])
    return {"exact_match": score, "qtype_accuracy": {"qtype": doc["qtype"], "score": score}}


def count_process_results(doc, results):
    return {"exact_match": M.exact_match(results[0], doc["answer"])}


def aggregate_mean(items):
    return M.mean(items)


def aggregate_qtype_accuracy(items):
    """{qtype: accuracy}; the evaluate stage flattens it to ``shapes_vqa/acc_<qtype>``."""
    return M.accuracy_by_group(items, "qtype")


# ---------------------------------------------------------------- shapes_pope

# accuracy, F1 and yes-ratio overall and per negative-sampling split; precision/recall overall.
POPE_METRIC_NAMES = [f"{m}{s}" for m in ("accuracy", "f1", "yes_ratio")
                     for s in ("", *(f"_{x}" for x in M.POPE_SPLITS))] + ["precision", "recall"]


def pope_process_results(doc, results):
    item = {"split": doc["split"], "prediction": M.parse_yes_no(results[0]),
            "answer": M.normalize_answer(doc["answer"])}
    return {name: item for name in POPE_METRIC_NAMES}


def _pope(metric, split=None):
    def aggregate(items):
        return M.pope_scores([x for x in items if split is None or x["split"] == split])[metric]
    return aggregate


pope_accuracy = _pope("accuracy")
pope_f1 = _pope("f1")
pope_yes_ratio = _pope("yes_ratio")
pope_precision = _pope("precision")
pope_recall = _pope("recall")
pope_accuracy_random = _pope("accuracy", "random")
pope_accuracy_popular = _pope("accuracy", "popular")
pope_accuracy_adversarial = _pope("accuracy", "adversarial")
pope_f1_random = _pope("f1", "random")
pope_f1_popular = _pope("f1", "popular")
pope_f1_adversarial = _pope("f1", "adversarial")
pope_yes_ratio_random = _pope("yes_ratio", "random")
pope_yes_ratio_popular = _pope("yes_ratio", "popular")
pope_yes_ratio_adversarial = _pope("yes_ratio", "adversarial")


# ---------------------------------------------------------------- shapes_desc

DESC_METRIC_NAMES = ("chair_i", "chair_s", "object_recall", "object_f1")


def desc_process_results(doc, results):
    item = M.chair_item(results[0], doc["objects"])
    return {name: item for name in DESC_METRIC_NAMES}


def desc_chair_i(items):
    return M.chair_scores(items)["chair_i"]


def desc_chair_s(items):
    return M.chair_scores(items)["chair_s"]


def desc_object_recall(items):
    return M.chair_scores(items)["object_recall"]


def desc_object_f1(items):
    return M.chair_scores(items)["object_f1"]
