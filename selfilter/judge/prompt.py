"""The rating prompt: Alpagasus's accuracy/quality rating, adapted to visual instructions.

An Alpagasus-style judge reads text only. For visual data it is given what stands in for the
image: the scene description/annotation when one exists (as LLaVA's own data was generated from
COCO captions and boxes); otherwise only the conversation, so it can judge fluency and internal
consistency but not faithfulness to the image.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

SYSTEM_PROMPT = (
    "You are a careful reviewer of training data for a vision-language assistant. "
    "You check whether the assistant's answers are accurate and useful."
)

_WITH_SCENE = "The image is described by this annotation:\n{scene}\n\n"
_NO_SCENE = "The image itself is not available; judge from the conversation alone.\n\n"

USER_TEMPLATE = (
    "Below is a conversation between a user and an AI assistant about an image.\n\n"
    "{context}"
    "Conversation:\n{conversation}\n\n"
    "Rate the accuracy and quality of the assistant's answers on a scale from 0 to 10, where 10 "
    "means every answer is correct given the image, complete and helpful, and 0 means the "
    "answers are wrong, made up, cut off or uninformative. Write only the score on the first "
    "line, then explain your rating on the following lines."
)


def describe_annotation(scene: dict[str, Any]) -> str:
    """A scene annotation as plain text, one object per line, every field kept (generic)."""
    objects = scene.get("objects", [])
    if not objects:
        return "(no objects annotated)"
    lines = []
    for i, o in enumerate(objects, 1):
        lines.append(f"{i}. " + ", ".join(f"{k}: {v}" for k, v in o.items()))
    return "\n".join(lines)


def build_messages(conversation: str, scene: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Chat messages for one record; ``conversation`` is ``conversation_text(...)``."""
    context = _WITH_SCENE.format(scene=describe_annotation(scene)) if scene is not None else _NO_SCENE
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(context=context, conversation=conversation)},
    ]


def cache_key(model: str, messages: list[dict[str, str]]) -> str:
    """sha256 of the model name and the full prompt: same model + same prompt -> same reply."""
    blob = model + "\n" + json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
