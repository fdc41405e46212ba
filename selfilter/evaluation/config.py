"""params.yaml section ``evaluate``: which lmms-eval tasks, on what, how parallel.

``tasks: auto`` evaluates on the data's own benchmark (``source.json``): the shapes tasks for the
embedded data, the held-out split's tasks for yours. A list names lmms-eval tasks: this
project's (``evaluation/tasks``), your own task folder's (``include_path``), or lmms-eval's
standard ones by name (the GPU profiles).
"""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from selfilter.config import Section

from typing import Literal

SHAPES_DEFAULT_TASKS = ["shapes_count", "shapes_desc", "shapes_vqa", "shapes_pope", "shapes_binding"]
HELDOUT_TASKS = ["selfilter_heldout_ll", "selfilter_heldout_short"]


class EvaluateConfig(Section):
    tasks: Literal["auto"] | list[str] = "auto"
    include_path: str | list[str] = "evaluation/tasks"  # folder(s) of custom lmms-eval task YAMLs (add yours)
    limit: int | None = Field(None, ge=1)      # at most this many documents per task (null = all)
    model: str = "selfilter_llava_hf"          # an lmms-eval registered model name (ours: llava_hf + a working loglikelihood)
    device: str = "cpu"                        # cpu | cuda | cuda:N
    dtype: str = "float32"                     # float32 | bfloat16 | float16 | auto
    workers: int = Field(2, ge=1)              # evaluation processes (each loads the tasks once)
    torch_threads: int = Field(1, ge=1)        # per worker: on 2 cores, 2 workers x 1 thread wins
    batch_size: int = Field(16, ge=1)          # questions per generate call (selfilter_llava_hf; 1 = llava_hf's own loop)

    @model_validator(mode="after")
    def _batching_model(self):
        if self.batch_size > 1 and self.model != "selfilter_llava_hf":
            raise ValueError(f"evaluate.batch_size {self.batch_size} needs model selfilter_llava_hf: lmms-eval's "
                             f"{self.model} generates one question at a time (set batch_size: 1)")
        return self

    @field_validator("tasks")
    @classmethod
    def _non_empty(cls, v):
        if v == "auto":
            return v
        if not v:
            raise ValueError("at least one lmms-eval task is needed")
        if len(set(v)) != len(v):
            raise ValueError("a task is listed twice")
        return v


def resolve_tasks(tasks: str | list[str], benchmark_kind: str) -> list[str]:
    """``tasks`` with ``auto`` replaced by the benchmark's tasks (a clear error when there is none)."""
    if tasks != "auto":
        return list(tasks)
    if benchmark_kind == "shapes":
        return list(SHAPES_DEFAULT_TASKS)
    if benchmark_kind == "heldout":
        return list(HELDOUT_TASKS)
    raise ValueError("evaluate.tasks is auto, but the data has no benchmark (data.benchmark: none): name the "
                     "lmms-eval tasks in evaluate.tasks, or set data.benchmark: heldout")
