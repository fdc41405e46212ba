"""params.yaml section ``evaluate``: which lmms-eval tasks, on what, how parallel."""
from __future__ import annotations

from pydantic import Field, field_validator

from selfilter.config import Section

SHAPES_DEFAULT_TASKS = ["shapes_vqa", "shapes_pope", "shapes_count", "shapes_desc"]


class EvaluateConfig(Section):
    tasks: list[str] = Field(default_factory=lambda: list(SHAPES_DEFAULT_TASKS))
    include_path: str = "evaluation/tasks"     # folder of custom lmms-eval task YAMLs
    limit: int | None = Field(None, ge=1)      # at most this many documents per task (null = all)
    model: str = "llava_hf"                    # an lmms-eval registered model name
    device: str = "cpu"                        # cpu | cuda | cuda:N
    dtype: str = "float32"                     # float32 | bfloat16 | float16 | auto
    workers: int = Field(2, ge=1)              # evaluation processes (each loads the tasks once)
    torch_threads: int = Field(1, ge=1)        # per worker: on 2 cores, 2 workers x 1 thread wins

    @field_validator("tasks")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one lmms-eval task is needed")
        if len(set(v)) != len(v):
            raise ValueError("a task is listed twice")
        return v
