"""Scores of the embedded "shapes" benchmarks: pure functions, no lmms-eval, no I/O.

The lmms-eval tasks in ``evaluation/tasks/shapes/utils.py`` call these per document and per
aggregation; the comparison report uses the same normalisation for the most-common-answer
baselines, so "beats the majority answer" compares like with like.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"])}
# Object vocabulary for CHAIR-style scoring, like CHAIR's fixed COCO object list. Shapes and
# colours that a scene annotation names are always recognised too (see ``chair_item``).
SHAPES = ("circle", "square", "triangle", "rectangle", "star", "diamond", "ellipse", "oval",
          "pentagon", "hexagon", "cross", "heart", "ring")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black",
          "white", "gray", "grey", "cyan", "magenta")
POPE_SPLITS = ("random", "popular", "adversarial")


def normalize_answer(text: Any) -> str:
    """Lower-case words; punctuation and articles dropped; number words as digits.

    "Three." == "3" == "three"; "A red circle" == "red circle". A word-level decoder glues
    punctuation to words (NOTES.md), so comparing raw strings would undercount.
    """
    words = re.sub(r"[^0-9a-z]+", " ", str(text).lower()).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def exact_match(prediction: Any, answer: Any) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def accuracy_by_group(items: Iterable[Mapping[str, Any]], key: str) -> dict[str, float]:
    """{group: mean of ``score``} over items grouped by ``item[key]``, sorted by group."""
    groups: dict[str, list[float]] = defaultdict(list)
    for item in items:
        groups[str(item[key])].append(float(item["score"]))
    return {g: mean(v) for g, v in sorted(groups.items())}


def majority_baseline(answers: Iterable[Any]) -> tuple[str, float]:
    """The most common normalised answer and the accuracy of always giving it (ties: the
    alphabetically first answer, so the baseline is deterministic)."""
    counts = Counter(normalize_answer(a) for a in answers)
    if not counts:
        return "", 0.0
    answer, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return answer, n / sum(counts.values())


# ---------------------------------------------------------------- POPE

def parse_yes_no(prediction: Any) -> str:
    """'yes' / 'no' from the first word of the answer; anything else is 'other' (always wrong)."""
    words = normalize_answer(prediction).split()
    return words[0] if words and words[0] in ("yes", "no") else "other"


def pope_scores(items: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class 'yes') and yes-ratio of ``items``, each
    ``{"prediction": yes|no|other, "answer": yes|no}``.

    Yes-ratio is the share of *predicted* yes, as POPE reports it: a model that always answers
    yes gets 1.0 there (and 50% accuracy on a balanced split).
    """
    n = len(items)
    if n == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    tp = sum(1 for x in items if x["prediction"] == "yes" and x["answer"] == "yes")
    fp = sum(1 for x in items if x["prediction"] == "yes" and x["answer"] != "yes")
    fn = sum(1 for x in items if x["prediction"] != "yes" and x["answer"] == "yes")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(1 for x in items if x["prediction"] == x["answer"]) / n,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(1 for x in items if x["prediction"] == "yes") / n,
    }


# ---------------------------------------------------------------- CHAIR-style hallucination

def _singular(word: str, shapes: Sequence[str]) -> str:
    for suffix in ("es", "s"):
        if word.endswith(suffix) and word[: -len(suffix)] in shapes:
            return word[: -len(suffix)]
    return word


def caption_mentions(caption: Any, shapes: Sequence[str] = SHAPES,
                     colors: Sequence[str] = COLORS) -> list[tuple[str | None, str]]:
    """Object mentions of a caption: ``(colour or None, shape)`` per shape noun (plurals too),
    with the colour word right before it, or one word earlier ("red small circle")."""
    words = [_singular(w, shapes) for w in re.sub(r"[^a-z]+", " ", str(caption).lower()).split()]
    mentions = []
    for i, w in enumerate(words):
        if w not in shapes:
            continue
        color = next((words[j] for j in (i - 1, i - 2) if j >= 0 and words[j] in colors), None)
        mentions.append((color, w))
    return mentions


def chair_item(caption: Any, objects: Iterable[Mapping[str, Any]], level: str = "category") -> dict[str, int]:
    """Counts for one caption against its scene annotation.

    ``level="category"`` (what the shapes benchmark scores, CHAIR's own unit): the categories a
    caption mentions - each shape noun and each colour word, once per caption, as CHAIR counts
    COCO categories - are hallucinated when no scene object has them; ``recalled`` counts the
    scene's categories (its shapes and colours) that the caption mentions, out of ``objects``.

    ``level="object"``: a (colour, shape) mention is hallucinated when no scene object has its
    shape - and its colour, when the caption states one; ``recalled`` counts the distinct
    (colour, shape) scene objects some mention matches. This needs the colour bound to the
    right shape, which the embedded tiny model does not learn (docs/TESTBED.md).
    """
    if level == "category":
        present = {str(o["shape"]).lower() for o in objects} | {str(o["color"]).lower() for o in objects}
        vocab = set(SHAPES) | set(COLORS) | present
        shapes = tuple(set(SHAPES) | {str(o["shape"]).lower() for o in objects})
        words = {_singular(w, shapes) for w in re.sub(r"[^a-z]+", " ", str(caption).lower()).split()}
        mentioned = words & vocab
        return {"mentions": len(mentioned), "hallucinated": len(mentioned - present),
                "recalled": len(mentioned & present), "objects": len(present)}
    if level != "object":
        raise ValueError(f"unknown CHAIR level {level!r}; valid: category, object")
    scene = {(str(o["color"]).lower(), str(o["shape"]).lower()) for o in objects}
    shapes = SHAPES + tuple(sorted({s for _, s in scene} - set(SHAPES)))
    colors = COLORS + tuple(sorted({c for c, _ in scene} - set(COLORS)))
    mentions = caption_mentions(caption, shapes, colors)

    def matches(mention, obj):
        return mention[1] == obj[1] and (mention[0] is None or mention[0] == obj[0])

    return {
        "mentions": len(mentions),
        "hallucinated": sum(1 for m in mentions if not any(matches(m, o) for o in scene)),
        "recalled": sum(1 for o in scene if any(matches(m, o) for m in mentions)),
        "objects": len(scene),
    }


def chair_scores(items: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """CHAIR_i = hallucinated mentions / all mentions (pooled over captions, as CHAIR does);
    CHAIR_s = captions with any hallucination / captions; recall pooled over scene objects;
    object_f1 = harmonic mean of (1 - CHAIR_i) and recall. An empty caption hallucinates
    nothing and recalls nothing, so F1 - not CHAIR alone - is the score that ranks describers.
    """
    mentions = sum(x["mentions"] for x in items)
    objects = sum(x["objects"] for x in items)
    chair_i = sum(x["hallucinated"] for x in items) / mentions if mentions else 0.0
    precision = 1.0 - chair_i if mentions else 0.0
    recall = sum(x["recalled"] for x in items) / objects if objects else 0.0
    return {
        "chair_i": chair_i,
        "chair_s": sum(1 for x in items if x["hallucinated"]) / len(items) if items else 0.0,
        "object_recall": recall,
        "object_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }
