"""What each part of the pipeline needs that a dataset may lack, and the one line that says so.

The embedded shapes data has everything: scene annotations (the offline annotation judge rates
records against them), hidden imperfection labels (the ``oracle_clean`` control, the report's
known-imperfect columns) and a benchmark. Your data usually has none of the first two. A part
that needs what is missing is **left out, never fed a constant**: its stage writes
``left_out.json`` (``{"name", "reason"}``) in place of its outputs and prints the reason, the
stages after it skip it, and the report lists it with that reason. The flow prints every such
line before any stage runs (:func:`planned_left_out`).

One rule everywhere: left out, not refused - so a first run on your own data gets as far as the
data allows, and the report says what did not run and how to make it run.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from selfilter.io import read_json, write_json

LEFT_OUT_FILE = "left_out.json"

# Stage-1 settings and the judge: the scores setting's score net reads the judge rating (PAPER.md).
STAGE1_READS_JUDGE = {"scores": True, "clip": False}


def judge_missing(backend: str, has_scenes: bool) -> str | None:
    """Why the judge cannot rate this data, or None. Only the OpenAI-compatible backend reads the
    records alone; the offline backends rate against scene annotations."""
    if backend == "openai" or has_scenes:
        return None
    return (f"the {backend} judge rates records against scene annotations and this data has none "
            f"(data.scenes: null); set judge.backend: openai and judge.openai.base_url (any "
            f"OpenAI-compatible endpoint), or give data.scenes")


def stage1_missing(setting: str, judge_reason: str | None) -> str | None:
    if STAGE1_READS_JUDGE.get(setting) and judge_reason:
        return f"its score net reads judge ratings: {judge_reason}"
    return None


def method_missing(needs: Iterable[str], *, judge_reason: str | None, has_hidden: bool,
                   stage1_reasons: Mapping[str, str | None], has_scenes: bool = True) -> str | None:
    """Why a selection method with these declared inputs cannot run on this data, or None."""
    from selfilter.selection import registry as reg

    for need in needs:
        if need == reg.JUDGE and judge_reason:
            return f"it reads judge ratings: {judge_reason}"
        if need == reg.CLEAN and not has_hidden:
            return ("it reads hidden imperfection labels and this data has none (data.hidden_labels: null); "
                    "give data.hidden_labels ({\"id\", \"kind\"} per line)")
        if need == reg.SCENE_SIZE and not has_scenes:
            return ("it reads scene annotations (objects per picture) and this data has none (data.scenes: null); "
                    "give data.scenes ({\"image\", \"objects\"} per line)")
        setting = {reg.DIFFICULTY_SCORES: "scores", reg.DIFFICULTY_CLIP: "clip"}.get(need)
        if setting and stage1_reasons.get(setting):
            return f"it reads stage 1's {setting} setting, whose {stage1_reasons[setting].removeprefix('its ')}"
    return None


def line(name: str, reason: str) -> str:
    """The one line a left-out part prints and the report shows."""
    return f"{name}: left out - {reason}"


def write_left_out(folder: str | Path, name: str, reason: str) -> Path:
    path = Path(folder) / LEFT_OUT_FILE
    write_json(path, {"name": name, "reason": reason})
    return path


def read_left_out(folder: str | Path) -> str | None:
    """The reason ``folder``'s part was left out, or None when it ran."""
    path = Path(folder) / LEFT_OUT_FILE
    return str(read_json(path)["reason"]) if path.is_file() else None


def judge_left_out(ratings: str | Path | None) -> str | None:
    """The judge stage's reason for leaving itself out (``usage.json`` beside ``ratings``), or None."""
    if not ratings:
        return None
    usage = Path(ratings).parent / "usage.json"
    return read_json(usage).get("left_out") if usage.is_file() else None


def planned_left_out(params: Mapping[str, Any]) -> dict[str, str]:
    """From the params alone (before any stage runs): every stage-1 setting and selection method
    that will be left out, with its reason. The flow prints these first."""
    from selfilter.selection import registry as reg

    data = params.get("data") or {}
    own = data.get("source", "shapes") != "shapes"
    has_scenes = not own or bool(data.get("scenes"))
    has_hidden = not own or bool(data.get("hidden_labels"))
    judge_reason = judge_missing(str((params.get("judge") or {}).get("backend", "annotation")), has_scenes)
    out: dict[str, str] = {}
    if judge_reason:
        out["judge"] = judge_reason
    stage1 = {s: stage1_missing(s, judge_reason) for s in (params.get("stage1") or {}).get("settings", [])}
    out.update({f"stage1@{s}": r for s, r in stage1.items() if r})
    select = params.get("select") or {}
    for name in [*select.get("methods", []), *select.get("field_methods", [])]:
        method = reg.METHODS.get(name)
        if method is None:
            continue
        why = method_missing(method.needs, judge_reason=judge_reason, has_hidden=has_hidden, stage1_reasons=stage1,
                             has_scenes=has_scenes)
        if why:
            out[name] = why
    return out
