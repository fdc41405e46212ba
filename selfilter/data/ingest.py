"""Validate LLaVA-format instruction data into ``records.jsonl`` + ``rejected.jsonl``.

Input: a JSON array (or JSONL, one object a line) of records ``{"id", "image"?, "conversations":
[{"from": "human"|"gpt", "value": str}, ...]}`` - the format of LLaVA-Instruct-158K and the
LLaVA-1.5 665K mix. Every input record ends up in exactly one of the two outputs:

- kept records are written byte-for-byte as parsed (all keys, unknown ones too) plus ``uid``, the
  record's 0-based position in the input. ``id`` is *not* an identity: real data repeats ids and
  some records have none.
- rejected records become ``{"index", "id", "reason", "detail"}``; ``reason`` is one of the stable
  codes in :data:`REASONS`, ``detail`` says what exactly is wrong.

Images are checked the way training will read them: the path must stay inside the image folder
(no absolute paths, no ``..``, no symlink resolving outside), the file must exist, be non-empty,
be an image PIL identifies, not exceed ``max_pixels`` (decompression bombs), and fully decode
(``im.load()``, which catches truncated files that ``verify()`` lets through). Any mode PIL
decodes (RGB, grayscale, palette, CMYK, ...) is kept; conversion to RGB happens at load time, never
on disk. Results are cached per resolved path because real pools reuse images (158K records,
81K COCO images).

The ``<image>`` placeholder (documented choice, shared with ``selfilter.data.encode``):
- an image record whose text lacks ``<image>`` is **kept untouched**; the encoder prepends
  ``"<image>\\n"`` to its first human turn in the model's view (LLaVA's convention);
- a text-only record whose text contains ``<image>`` is kept; the encoder removes it;
- more than one ``<image>`` in a record is **rejected** (``image_placeholder_multiple``): LLaVA
  records carry one image, and the processor could not match placeholders to images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image, ImageFile, UnidentifiedImageError
from tqdm.auto import tqdm

from selfilter.data.config import DEFAULT_MAX_IMAGE_PIXELS
from selfilter.data.records import IMAGE_PLACEHOLDER
from selfilter.io import write_json, write_jsonl, write_sidecar

ROLES = ("human", "gpt")

# reason code -> what it means (the codes are a stable interface: summary.json counts them).
REASONS: dict[str, str] = {
    "not_an_object": "the record is not a JSON object",
    "conversations_missing": "no 'conversations' key",
    "conversations_not_list": "'conversations' is not a list",
    "conversations_empty": "'conversations' is an empty list",
    "turn_not_object": "a turn is not an object with 'from' and 'value'",
    "unknown_role": "a turn's 'from' is not 'human' or 'gpt'",
    "value_not_string": "a turn's 'value' is not a string",
    "no_answer_turn": "no 'gpt' turn: nothing to supervise",
    "answer_empty": "a 'gpt' turn is empty or whitespace only: it would teach the model to say nothing",
    "image_placeholder_multiple": "more than one <image> placeholder in the record",
    "image_path_invalid": "'image' is not a non-empty path string",
    "image_path_absolute": "'image' is an absolute path",
    "image_path_escapes": "'image' contains '..'",
    "image_symlink_outside": "'image' resolves (through a symlink) outside the image folder",
    "image_missing": "the image file does not exist",
    "image_not_file": "the image path is not a regular file",
    "image_empty": "the image file is empty (0 bytes)",
    "image_unreadable": "the file is not an image PIL can identify or decode",
    "image_truncated": "the image file is truncated",
    "image_too_large": "the image exceeds the pixel limit (decompression bomb)",
}


class AnnotationsError(ValueError):
    """The annotations file cannot be read as a whole; the message names the file (and line)."""


@dataclass(frozen=True)
class Problem:
    reason: str
    detail: str

    def __post_init__(self) -> None:
        assert self.reason in REASONS, self.reason  # codes are an interface: no ad-hoc strings


@dataclass
class IngestResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        by_reason = Counter(r["reason"] for r in self.rejected)
        return {
            "input": len(self.kept) + len(self.rejected),
            "kept": len(self.kept),
            "rejected": len(self.rejected),
            "kept_text_only": sum(1 for r in self.kept if "image" not in r),
            "by_reason": dict(sorted(by_reason.items())),
            "duplicate_ids": duplicate_ids(self.kept),
        }


def duplicate_ids(records: Sequence[dict[str, Any]], examples: int = 5) -> dict[str, Any]:
    """Kept records that share an ``id`` with another kept record. They are kept - LLaVA-665K
    repeats ids, and ``uid`` is the pipeline's identity - but reported, because an id-keyed side
    file (hidden labels) cannot tell them apart."""
    counts = Counter(r.get("id") for r in records if r.get("id") is not None)
    repeated = {i: c for i, c in counts.items() if c > 1}
    return {"ids": len(repeated), "records": sum(repeated.values()),
            "examples": [str(i) for i in list(repeated)[:examples]]}


# --------------------------------------------------------------------------- reading


def read_annotations(path: str | Path) -> list[Any]:
    """Parse a JSON array or a JSONL file; raise :class:`AnnotationsError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationsError(f"{path}: annotations file not found") from None
    except IsADirectoryError:
        raise AnnotationsError(f"{path}: is a folder, expected a JSON or JSONL file") from None
    except UnicodeDecodeError as e:
        raise AnnotationsError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise AnnotationsError(f"{path}: cannot read ({e.strerror})") from None
    text = text.removeprefix("\ufeff")  # some exporters write a UTF-8 byte-order mark
    stripped = text.lstrip()
    if not stripped:
        raise AnnotationsError(f"{path}: empty file, expected a JSON array or JSONL records")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationsError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):  # pragma: no cover - '[' guarantees a list
            raise AnnotationsError(f"{path}: expected a JSON array of records")
        return data
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise AnnotationsError(
                f"{path}:{lineno}: not valid JSON ({e.msg}); expected a JSON array or one JSON record per line"
            ) from None
    return rows


# --------------------------------------------------------------------------- checks


def check_conversations(record: dict[str, Any]) -> Problem | None:
    """The structural checks on ``conversations`` (no I/O)."""
    if "conversations" not in record:
        return Problem("conversations_missing", "record has no 'conversations' key")
    conv = record["conversations"]
    if not isinstance(conv, list):
        return Problem("conversations_not_list", f"'conversations' is {type(conv).__name__}, expected a list")
    if not conv:
        return Problem("conversations_empty", "'conversations' is empty")
    placeholders = 0
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return Problem("turn_not_object", f"turn {t} is not an object with 'from' and 'value'")
        if turn["from"] not in ROLES:
            return Problem("unknown_role", f"turn {t} has from={turn['from']!r}, expected 'human' or 'gpt'")
        if not isinstance(turn["value"], str):
            return Problem("value_not_string", f"turn {t} value is {type(turn['value']).__name__}, expected a string")
        placeholders += turn["value"].count(IMAGE_PLACEHOLDER)
    if not any(turn["from"] == "gpt" for turn in conv):
        return Problem("no_answer_turn", "no 'gpt' turn")
    for t, turn in enumerate(conv):
        if turn["from"] == "gpt" and not turn["value"].strip():
            return Problem("answer_empty", f"turn {t} (gpt) is {turn['value']!r}: empty or whitespace only")
    if placeholders > 1:
        return Problem("image_placeholder_multiple", f"{placeholders} '<image>' placeholders, at most one allowed")
    return None


def check_image_path(rel: Any, image_dir: Path) -> tuple[Path | None, Problem | None]:
    """Path safety: returns the resolved file path, or the problem. Touches the file system only
    to resolve symlinks and test existence."""
    if not isinstance(rel, str) or not rel.strip():
        return None, Problem("image_path_invalid", f"'image' is {rel!r}, expected a relative path string")
    if os.path.isabs(rel) or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() \
            or PureWindowsPath(rel).drive:
        return None, Problem("image_path_absolute", f"'image' is the absolute path {rel!r}")
    if ".." in PurePosixPath(rel.replace("\\", "/")).parts:
        return None, Problem("image_path_escapes", f"'image' {rel!r} contains '..'")
    path = image_dir / rel
    if not os.path.lexists(path):
        return None, Problem("image_missing", f"{rel} not found under {image_dir}")
    resolved = path.resolve()
    if not resolved.is_relative_to(image_dir.resolve()):
        return None, Problem("image_symlink_outside", f"{rel} resolves to {resolved}, outside {image_dir}")
    if not resolved.exists():
        return None, Problem("image_missing", f"{rel} is a broken symlink under {image_dir}")
    if not resolved.is_file():
        return None, Problem("image_not_file", f"{rel} under {image_dir} is not a regular file")
    return resolved, None


def check_image_file(path: Path, max_pixels: int) -> Problem | None:
    """Open and fully decode ``path``; the problem if it cannot be used for training."""
    name = str(path)
    if path.stat().st_size == 0:
        return Problem("image_empty", f"{name} is empty (0 bytes)")
    saved_limit, saved_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        # Our limit, enforced twice: an explicit check on the header's size (before any decoding)
        # and PIL's own bomb guard, with its warning turned into an error.
        Image.MAX_IMAGE_PIXELS = max_pixels
        # Libraries set this process-wide (lmms-eval's imports do): truncated files then decode
        # silently, padded with grey. Ingest must see them as truncated whoever imported what.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return Problem("image_too_large", f"{name} is {w}x{h} = {w * h} pixels > limit {max_pixels}")
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return Problem("image_too_large", f"{name}: {e}")
    except UnidentifiedImageError:
        return Problem("image_unreadable", f"{name} is not an image PIL can identify")
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            return Problem("image_truncated", f"{name}: {msg}")
        return Problem("image_unreadable", f"{name}: {msg}")
    except (SyntaxError, ValueError, TypeError, EOFError) as e:  # PIL raises these on corrupt headers
        return Problem("image_unreadable", f"{name}: {type(e).__name__}: {e}")
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved_limit, saved_truncated
    return None


def check_record_static(record: Any, image_dir: Path) -> tuple[Path | None, Problem | None]:
    """Every check but decoding the image: ``(image file still to decode, None)``, or
    ``(None, problem)``, or ``(None, None)`` for a good text-only record."""
    if not isinstance(record, dict):
        return None, Problem("not_an_object", f"record is {type(record).__name__}, expected an object")
    problem = check_conversations(record)
    if problem or "image" not in record:
        return None, problem  # text-only records are kept
    return check_image_path(record["image"], image_dir)


def check_record(record: Any, image_dir: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 _cache: dict[Path, Problem | None] | None = None) -> Problem | None:
    """Every check on one record; ``None`` if it is kept."""
    path, problem = check_record_static(record, image_dir)
    if path is None:
        return problem
    if _cache is not None and path in _cache:
        return _cache[path]
    problem = check_image_file(path, max_pixels)
    if _cache is not None:
        _cache[path] = problem
    return problem


def check_image_files(paths: Sequence[Path], max_pixels: int, workers: int = 1,
                      progress: bool = False) -> list[Problem | None]:
    """:func:`check_image_file` of each path, in order; decoding (the cost of ingest) spread over
    ``workers`` processes."""
    check = partial(check_image_file, max_pixels=max_pixels)
    bar = partial(tqdm, total=len(paths), desc="ingest: images", unit="img", disable=not progress,
                  mininterval=1.0)
    if workers <= 1 or len(paths) < 2 * _IMAGE_CHUNK:
        return list(bar(map(check, paths)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(bar(pool.map(check, paths, chunksize=_IMAGE_CHUNK)))


_IMAGE_CHUNK = 256  # images per task sent to a worker: amortises the pickling round trip


def ingest_records(records: Sequence[Any], image_dir: str | Path, *,
                   max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, progress: bool = True,
                   workers: int = 1) -> IngestResult:
    """Split ``records`` into kept (plus ``uid``) and rejected; kept + rejected = input.
    Each distinct image file is decoded once (real pools reuse images), in ``workers`` processes."""
    image_dir = Path(image_dir)
    result = IngestResult()
    static = [check_record_static(r, image_dir) for r in tqdm(records, desc="ingest", unit="rec",
                                                                disable=not progress, mininterval=1.0)]
    paths = list(dict.fromkeys(path for path, _ in static if path is not None))
    decoded = dict(zip(paths, check_image_files(paths, max_pixels, workers, progress)))
    for index, (record, (path, problem)) in enumerate(zip(records, static)):
        if path is not None:
            problem = decoded[path]
        if problem is None:
            # uid last so that the original keys keep their order; an input 'uid' key is
            # overwritten because uid is the pipeline's identity.
            result.kept.append({**{k: v for k, v in record.items() if k != "uid"}, "uid": index})
        else:
            rid = record.get("id") if isinstance(record, dict) else None
            result.rejected.append({"index": index, "id": rid, "reason": problem.reason,
                                    "detail": problem.detail})
    return result


def run_ingest(annotations: str | Path, image_dir: str | Path, out: str | Path, *,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """Read, validate, write ``OUT/{records.jsonl,rejected.jsonl,summary.json}``; return the summary."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise AnnotationsError(f"{image_dir}: image folder not found")
    records = read_annotations(annotations)
    result = ingest_records(records, image_dir, max_pixels=max_pixels, progress=progress, workers=workers)
    out = Path(out)
    summary = {**result.summary(), "annotations": str(annotations), "image_dir": str(image_dir),
               "max_image_pixels": max_pixels}
    write_jsonl(out / "records.jsonl", result.kept)
    write_jsonl(out / "rejected.jsonl", result.rejected)
    write_json(out / "summary.json", summary)
    write_sidecar(out / "records.jsonl", params={"max_image_pixels": max_pixels, "image_dir": str(image_dir)},
                  inputs={"annotations": annotations}, kept=len(result.kept), rejected=len(result.rejected))
    return summary


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("annotations", help="LLaVA-format JSON array or JSONL file")
    parser.add_argument("--image-dir", required=True, help="folder that record 'image' paths are relative to")
    parser.add_argument("--out", required=True, help="output folder (records.jsonl, rejected.jsonl, summary.json)")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help=f"reject larger images as decompression bombs (default {DEFAULT_MAX_IMAGE_PIXELS})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes decoding images (default: every core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        s = run_ingest(args.annotations, args.image_dir, args.out, max_pixels=args.max_image_pixels,
                       progress=not args.no_progress, workers=args.workers)
    except AnnotationsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    reasons = ", ".join(f"{k}={v}" for k, v in s["by_reason"].items()) or "none"
    print(f"ingest: {s['input']} records, kept {s['kept']}, rejected {s['rejected']} ({reasons}) -> {args.out}")
    return 0

