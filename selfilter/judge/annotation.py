"""Judge backend ``annotation``: rate answers against the scene annotation, offline.

This is what an LLM judge does when it is shown the annotations the data was generated from
(LLaVA-Instruct was written by GPT-4 from COCO captions and boxes): read each question, work out
from the annotation what the answer should be, compare, and rate the whole sample on 0-10.

- Short questions about colour, shape, size, position, counts, existence, relations and
  comparisons are answered from the scene and compared with the given answer.
- Descriptions are split into claims ("a small red circle at the top left", "There are 3
  objects") and each is checked; naming every object earns the top rating.
- A claim whose wording is not understood is neutral: it neither helps nor hurts.
- Cut-off answers and uninformative ones ("I am not sure.") rate low whatever else is true.

It never reads the imperfection labels; it sees only the record and the scene annotation.
With ``judge.annotation.view: caption`` it sees less: a caption's partial, sometimes wrong
summary of the scene (:func:`caption_view`), as a GPT judge of LLaVA data reads captions that
omit objects - so it also misjudges correct answers about what the caption left out.
The reply is formatted like an LLM judge's ("<score>\\n<explanation>") and goes through the
same parser as the ``openai`` backend.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

# Vocabulary the checker understands; colours/shapes seen in the scenes are added at run time.
COLORS = {"red", "green", "blue", "yellow", "white", "black", "orange", "purple", "pink", "brown", "gray", "grey"}
SHAPES = {"circle", "square", "triangle", "star", "rectangle", "diamond", "hexagon", "oval", "cross", "heart"}
SIZES = {"small", "large"}
SIZE_SYNONYMS = {"big": "large", "tiny": "small", "little": "small"}
ROWS = ("top", "middle", "bottom")
COLS = ("left", "middle", "right")
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
LOW_INFO = re.compile(r"not sure|hard to tell|cannot tell|can't tell|don't know|do not know|unclear|"
                      r"difficult to (?:say|tell)|some shapes|a few objects|some objects|impossible to")
NEGATION = re.compile(r"\b(?:no|not|none|never|without)\b")
SHORT_SUFFIX = re.compile(r"\s*answer with a single word\.?\s*$", re.I)


@dataclass
class Verdict:
    """What the judge found in one sample."""
    correct: int = 0
    wrong: int = 0
    truncated: int = 0
    low_info: int = 0
    turns: int = 0
    complete_description: bool = False
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Reading text
# --------------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _number(token: str) -> int | None:
    if token.isdigit():
        return int(token)
    return NUMBER_WORDS.get(token)


class Scene:
    """A scene annotation with the lookups the checker needs (row/col when annotated)."""

    def __init__(self, scene: dict[str, Any], colors: set[str], shapes: set[str]):
        self.objects: list[dict[str, Any]] = list(scene.get("objects", []))
        self.colors, self.shapes = colors, shapes

    def _place(self, o: dict[str, Any], axis: str) -> int | None:
        values = ROWS if axis == "row" else COLS
        v = o.get(axis)
        return values.index(v) if v in values else None

    def constraints(self, phrase: str) -> dict[str, str]:
        """'the small red circle at the top left' -> {size, color, shape, row, col}."""
        words = _words(phrase)
        c: dict[str, str] = {}
        for w in words:
            w = SIZE_SYNONYMS.get(w, w)
            if w in SIZES:
                c["size"] = w
            elif w in self.colors:
                c["color"] = w
            elif w in self.shapes or (w.endswith("s") and w[:-1] in self.shapes):
                c["shape"] = w if w in self.shapes else w[:-1]
        text = " ".join(words)
        if re.search(r"\b(?:in the )?cent(?:er|re)\b", text):
            c.update(row="middle", col="middle")
        if m := re.search(r"\bat the (top|middle|bottom)(?: (left|middle|right))?\b", text):
            c["row"] = m.group(1)
            if m.group(2):
                c["col"] = m.group(2)
        if m := re.search(r"\bon the (left|right)\b", text):
            c["col"] = m.group(1)
        return c

    def matches(self, c: dict[str, str]) -> list[dict[str, Any]]:
        return [o for o in self.objects if all(str(o.get(k)) == v for k, v in c.items())]

    def resolve(self, phrase: str) -> dict[str, Any] | None:
        """The one object a referring phrase names, or None (unknown wording or ambiguous)."""
        c = self.constraints(phrase)
        if "shape" not in c and "color" not in c:
            return None
        found = self.matches(c)
        return found[0] if len(found) == 1 else None

    def count(self, **c: str) -> int:
        return len(self.matches(c))


# --------------------------------------------------------------------------------------------
# Expected answers of short questions
# --------------------------------------------------------------------------------------------

def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def expected_answer(question: str, scene: Scene) -> str | None:
    """What the scene says the answer is, or None when the question is not understood."""
    q = SHORT_SUFFIX.sub("", question.replace("<image>", "")).strip().lower().rstrip("?").strip()
    if m := re.match(r"what colou?r is (.+)$", q):
        o = scene.resolve(m.group(1))
        return None if o is None else str(o.get("color"))
    if m := re.match(r"what shape is (.+)$", q):
        o = scene.resolve(m.group(1))
        return None if o is None else str(o.get("shape"))
    if m := re.match(r"is (.+) (?:small or large|large or small)$", q):
        o = scene.resolve(m.group(1))
        return None if o is None else str(o.get("size"))
    if m := re.match(r"is (.+) on the left, in the middle,? or on the right$", q):
        o = scene.resolve(m.group(1))
        return None if o is None else o.get("col")
    if m := re.match(r"is (.+) at the top, in the middle,? or at the bottom$", q):
        o = scene.resolve(m.group(1))
        return None if o is None else o.get("row")
    if re.match(r"how many (?:objects|shapes|things) are (?:there|in the image)$", q):
        return str(len(scene.objects))
    if m := re.match(r"how many objects are (?:to the )?(left|right|above|below)(?: of)? (.+)$", q):
        o = scene.resolve(m.group(2))
        if o is None:
            return None
        axis, sign = {"left": ("col", -1), "right": ("col", 1), "above": ("row", -1), "below": ("row", 1)}[m.group(1)]
        ref = scene._place(o, axis)
        if ref is None:
            return None
        return str(sum(((scene._place(p, axis) or 0) - ref) * sign > 0 for p in scene.objects))
    if m := re.match(r"how many (\w+) objects are there$", q):
        if m.group(1) in scene.colors:
            return str(scene.count(color=m.group(1)))
        return None
    if m := re.match(r"how many (\w+?)s are there$", q):
        if m.group(1) in scene.shapes:
            return str(scene.count(shape=m.group(1)))
        return None
    if m := re.match(r"is there an? (.+?)(?: in the image)?$", q):
        c = scene.constraints(m.group(1))
        return None if not c else _yes(bool(scene.matches(c)))
    if m := re.match(r"are there more (\w+?)s than (\w+?)s$", q):
        a, b = m.groups()
        if a in scene.shapes and b in scene.shapes:
            return _yes(scene.count(shape=a) > scene.count(shape=b))
    if m := re.match(r"are there more (\w+) objects than (\w+) objects$", q):
        a, b = m.groups()
        if a in scene.colors and b in scene.colors:
            return _yes(scene.count(color=a) > scene.count(color=b))
    if m := re.match(r"is (.+) to the (left|right) of (.+)$", q):
        a, b = scene.resolve(m.group(1)), scene.resolve(m.group(3))
        if a is None or b is None or scene._place(a, "col") is None or scene._place(b, "col") is None:
            return None
        d = scene._place(a, "col") - scene._place(b, "col")
        return _yes(d < 0 if m.group(2) == "left" else d > 0)
    if m := re.match(r"is (.+) (above|below) (.+)$", q):
        a, b = scene.resolve(m.group(1)), scene.resolve(m.group(3))
        if a is None or b is None or scene._place(a, "row") is None or scene._place(b, "row") is None:
            return None
        d = scene._place(a, "row") - scene._place(b, "row")
        return _yes(d < 0 if m.group(2) == "above" else d > 0)
    if m := re.match(r"is (.+) (larger|bigger|smaller) than (.+)$", q):
        a, b = scene.resolve(m.group(1)), scene.resolve(m.group(3))
        if a is None or b is None:
            return None
        rank = {"small": 0, "large": 1}
        da, db = rank.get(str(a.get("size"))), rank.get(str(b.get("size")))
        if da is None or db is None:
            return None
        return _yes(da > db if m.group(2) != "smaller" else da < db)
    return None


def answers_match(answer: str, expected: str) -> bool:
    words = _words(answer)
    if not words:
        return False
    exp = expected.lower()
    if exp.isdigit():
        return any(_number(w) == int(exp) for w in words[:3])
    first = SIZE_SYNONYMS.get(words[0], words[0])
    if exp in ("yes", "no"):
        return first == exp
    return exp in (SIZE_SYNONYMS.get(w, w) for w in words[:4])


# --------------------------------------------------------------------------------------------
# Descriptions and free-form answers
# --------------------------------------------------------------------------------------------

_PLACE = r"(?:\s+(?:in the cent(?:er|re)|at the (?:top|middle|bottom)(?: (?:left|middle|right))?|on the (?:left|right)))?"


def description_claims(text: str, scene: Scene) -> tuple[int, int, int]:
    """(supported, contradicted, distinct objects named) for the claims of a free-form answer."""
    ok = bad = 0
    named: set[int] = set()
    shapes = "|".join(sorted(scene.shapes, key=len, reverse=True))
    for sentence in re.split(r"[.;!?]", text.lower()):
        if NEGATION.search(sentence):
            continue  # "there is no red circle": not worth the risk of misreading
        if m := re.search(r"there (?:is|are) (\w+) (?:objects?|shapes?|things?)\b", sentence):
            n = _number(m.group(1))
            if n is not None:
                ok, bad = (ok + 1, bad) if n == len(scene.objects) else (ok, bad + 1)
        for m in re.finditer(rf"\b(?:a|an|one)\s+((?:\w+\s+){{0,3}}?)({shapes})s?\b({_PLACE})", sentence):
            c = scene.constraints(m.group(0))
            found = scene.matches(c)
            if found:
                ok += 1
                named.update(id(o) for o in found[:1])
            else:
                bad += 1
    return ok, bad, len(named)


def _looks_truncated(answer: str, vocabulary: set[str]) -> bool:
    """Empty, cut mid-word ('sm' for 'small'), or several words with no closing punctuation."""
    stripped = answer.strip()
    if not stripped:
        return True
    words = _words(stripped)
    if not words:
        return True
    last = words[-1]
    if len(words) <= 2 and last not in vocabulary and not last.isdigit() and any(
            v.startswith(last) and v != last for v in vocabulary):
        return True
    return len(words) >= 4 and stripped[-1] not in ".!?\"')"


# --------------------------------------------------------------------------------------------
# Rating
# --------------------------------------------------------------------------------------------

def judge_sample(conversations: Sequence[dict[str, str]], scene: Scene) -> Verdict:
    """Check every (question, answer) turn of one record against its scene."""
    v = Verdict()
    vocabulary = scene.colors | scene.shapes | SIZES | set(ROWS) | set(COLS) | {"yes", "no"} | set(NUMBER_WORDS)
    question = ""
    for turn in conversations:
        if turn.get("from") != "gpt":
            question = str(turn.get("value", ""))
            continue
        answer = str(turn.get("value", ""))
        v.turns += 1
        if LOW_INFO.search(answer.lower()):
            v.low_info += 1
            v.notes.append("an uninformative answer")
            continue
        if _looks_truncated(answer, vocabulary):
            v.truncated += 1
            v.notes.append("an answer that is cut off")
            continue
        expected = expected_answer(question, scene)
        if expected is not None:
            if answers_match(answer, expected):
                v.correct += 1
            else:
                v.wrong += 1
                v.notes.append(f"'{question.splitlines()[-1] if question else ''}' is answered "
                               f"'{answer.strip()}' but the annotation says '{expected}'")
            continue
        ok, bad, named = description_claims(answer, scene)
        v.correct += ok
        v.wrong += bad
        if bad:
            v.notes.append(f"{bad} claim(s) of a description contradict the annotation")
        if ok and not bad and named >= len(scene.objects):
            v.complete_description = True
    return v


def rating_of(v: Verdict) -> float:
    """The 0-10 rating an annotation-reading judge gives (documented in the module docstring)."""
    if v.turns == 0:
        return 0.0
    if v.truncated:
        return 2.0 if v.wrong else 3.0
    if v.low_info:
        return 1.0 if v.low_info == v.turns else 3.0
    if v.wrong:
        return round(1.0 + 5.0 * v.correct / (v.correct + v.wrong), 1)  # 1..6
    if v.correct:
        return 10.0 if v.complete_description or v.correct >= 3 else 9.0
    return 6.0  # nothing checkable: neutral


def explanation(v: Verdict) -> str:
    head = (f"Checked {v.correct + v.wrong} claim(s) against the scene annotation: "
            f"{v.correct} supported, {v.wrong} contradicted.")
    return " ".join([head, *(f"Found {n}." for n in v.notes[:5])])


def caption_view(scene: dict[str, Any], recall: float, error: float, seed: int) -> dict[str, Any]:
    """The scene as a caption-reading judge knows it: each object kept with probability
    ``recall`` (at least one, as a caption names something), and a kept object's colour or shape
    replaced by another seen in the scene set with probability ``error``. Seeded by the image
    path, so a picture reads the same in every record and every run."""
    objects = list(scene.get("objects", []))
    rng = np.random.default_rng([seed, zlib.crc32(str(scene.get("image", "")).encode("utf-8"))])
    keep = [o for o in objects if rng.random() < recall]
    if objects and not keep:
        keep = [objects[int(rng.integers(len(objects)))]]
    seen = []
    for o in keep:
        o = dict(o)
        if rng.random() < error:
            attr = "color" if rng.random() < 0.5 else "shape"
            others = sorted((CAPTION_COLORS if attr == "color" else CAPTION_SHAPES) - {o.get(attr)})
            o[attr] = others[int(rng.integers(len(others)))]
        seen.append(o)
    return {**scene, "objects": seen}


# The attribute values a mistaken caption names instead (the shapes generator's own).
CAPTION_COLORS = {"red", "green", "blue", "yellow", "white"}
CAPTION_SHAPES = {"circle", "square", "triangle"}


class AnnotationJudge:
    """Rates records against their scene annotations (or a caption's partial view of them,
    ``caption=(recall, error)``); optional seeded Gaussian noise."""

    def __init__(self, noise: float = 0.0, seed: int = 0, caption: tuple[float, float] | None = None):
        self.noise, self.seed, self.caption = noise, seed, caption
        self.usage: dict[str, int] = {"records": 0, "no_scene": 0, "claims_checked": 0, "claims_contradicted": 0}

    def respond(self, records: Sequence[dict[str, Any]], scenes: dict[str, dict[str, Any]],
                progress: bool = True) -> list[str]:
        from tqdm.auto import tqdm

        colors, shapes = set(COLORS), set(SHAPES)
        for s in scenes.values():
            for o in s.get("objects", []):
                colors.add(str(o.get("color", "")).lower())
                shapes.add(str(o.get("shape", "")).lower())
        colors.discard("")
        shapes.discard("")
        replies = []
        for r in tqdm(records, unit="rec", desc="judge (annotation)", disable=not progress):
            self.usage["records"] += 1
            scene = scenes.get(r.get("image") or "")
            if scene is None:
                self.usage["no_scene"] += 1
                replies.append(None)  # unparseable -> the mean, counted like an LLM's refusal
                continue
            if self.caption is not None:
                scene = caption_view(scene, *self.caption, seed=self.seed)
            v = judge_sample(r["conversations"], Scene(scene, colors, shapes))
            self.usage["claims_checked"] += v.correct + v.wrong
            self.usage["claims_contradicted"] += v.wrong
            rating = rating_of(v)
            if self.noise > 0:
                # Seeded per uid: the same record gets the same noise whatever the order.
                rng = np.random.default_rng([self.seed, int(r["uid"])])
                rating = float(np.clip(rating + rng.normal(0.0, self.noise), 0.0, 10.0))
            replies.append(f"{rating:.1f}\n{explanation(v)}")
        return replies

    def usage_report(self) -> dict[str, Any]:
        # No endpoint, no tokens: the counts keep usage.json's schema for the cost report.
        view = {"view": "caption", "caption_recall": self.caption[0], "caption_error": self.caption[1]} \
            if self.caption is not None else {"view": "scene"}
        return {"backend": "annotation", "noise": self.noise, **view, "requests": 0, "cache_hits": 0,
                "prompt_tokens": 0, "completion_tokens": 0, **self.usage}


def index_scenes(scenes: Iterable[dict[str, Any]], source: str = "scenes") -> dict[str, dict[str, Any]]:
    """Scene annotations keyed by their image path (as records name it)."""
    out = {}
    for i, s in enumerate(scenes, 1):
        if not isinstance(s, dict) or "image" not in s:
            raise ValueError(f"{source}:{i}: scene has no 'image' key")
        out[str(s["image"])] = s
    return out
