"""params.yaml section ``compare``: how runs are summarised and which calibration checks gate."""
from __future__ import annotations

from pydantic import Field

from selfilter.config import Section

# The one score per benchmark task that "overall" averages. lmms-eval tasks of the GPU profile
# add theirs here (e.g. mme: mme_perception_score) - a task without one is an error, not skipped.
DEFAULT_PRIMARY = {
    "shapes_vqa": "exact_match",
    "shapes_pope": "accuracy",
    "shapes_count": "exact_match",
    "shapes_desc": "object_f1",
    "shapes_binding": "exact_match",
    "pope": "pope_accuracy",
}


class CompareConfig(Section):
    primary_metrics: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PRIMARY))
    reference_method: str = "full"           # "relative to full data" divides by this method's overall
    baseline_method: str = "random"          # calibration: what full and the clean control must beat
    clean_control: str = "oracle_clean"      # calibration: the clean-subset control
    calibration_budget: float = Field(0.15, gt=0, le=1)  # the budget the calibration compares at
    min_seeds: int = Field(3, ge=2)          # fewer seeds: calibration reported as not checkable
    std_multiple: float = Field(2.0, gt=0)   # "beats by more than k seed standard deviations"
    min_questions_per_type: int = Field(50, ge=1)  # a per-type check on fewer questions fails
    confidence: float = Field(0.95, gt=0, lt=1)  # confidence level of the intervals over seeds
    fail_on_calibration: bool = True         # exit non-zero (after writing the report) if a check fails
    judge_methods: list[str] = Field(default_factory=lambda: ["alpagasus", "self_filter_scores"])  # consume judge ratings
    # Tasks reported on their own, outside ``overall`` and outside the calibration: question types
    # the embedded model does not learn (docs/TESTBED.md) stay visible without adding noise.
    diagnostic_tasks: list[str] = Field(default_factory=list)
