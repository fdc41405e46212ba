"""Schema of the ``select`` section of params.yaml."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from selfilter.config import Section

DEFAULT_METHODS = ["self_filter_scores", "self_filter_clip", "self_filter_nodiv", "random", "el2n",
                   "alpagasus", "prototypicality", "full", "oracle_clean"]


class SelectConfig(Section):
    methods: list[str] = Field(default=DEFAULT_METHODS)  # what dvc.yaml's matrix runs
    budgets: list[float] = Field(default=[0.05, 0.15, 0.30])  # fractions of the pool, in (0, 1]
    seeds: list[int] = Field(default=[0, 1, 2, 3, 4])
    k_nearest: int = Field(default=10, ge=0)  # Self-Filter diversity penalty: neighbours per pick
    gamma: float = 1.0  # Self-Filter penalty strength
    penalty: Literal["reference", "positive"] = "reference"
    device: str = "cpu"  # torch device for Self-Filter's neighbour search
    backend: Literal["auto", "dense", "clustered"] = "auto"  # neighbour index (picks never depend on it)
    precision: Literal["auto", "bfloat16", "float32"] = "auto"  # dense product: bf16 only where native
    n_clusters: int = Field(default=100, ge=1)  # prototypicality, semdedup: k-means clusters on CLIP features
    # The field's selectors (run by the field profile; see docs/METHOD.md "The field's selectors")
    field_methods: list[str] = Field(default=[])  # dvc.yaml's select_field matrix (needs the ifd/less stages)
    field_scorers: list[Literal["ifd", "less"]] = Field(default=[])  # dvc.yaml's score matrix
    semdedup_threshold: float | None = Field(default=None, ge=-1, le=1)  # semdedup: duplicate cosine; null: set by the budget
    coincide_clusters: int = Field(default=100, ge=1)  # coincide: spherical k-means clusters on activations
    coincide_temperature: float = Field(default=0.1, gt=0)  # coincide: softmax temperature of cluster shares
    coincide_kernel_width: float = Field(default=1.0, gt=0)  # coincide: Gaussian kernel sigma (density, MMD)
    guard_fence: float = Field(default=1.5, gt=0)  # self_filter_guarded: Tukey fence Q3 + k*IQR on difficulty

    @field_validator("budgets")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("at least one budget")
        for b in v:
            if not 0 < b <= 1:
                raise ValueError(f"budget {b} is not a fraction in (0, 1]")
        return v

    @field_validator("methods", "field_methods")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from selfilter.selection.registry import METHODS

        unknown = [m for m in v if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
        return v

    @model_validator(mode="after")
    def _some_method(self) -> "SelectConfig":
        # An empty grid would make every later stage a silent no-op (finetune: "up to date").
        if not self.methods and not self.field_methods:
            raise ValueError("select.methods (and select.field_methods) are empty: name at least one method")
        return self

    @model_validator(mode="after")
    def _field_inputs_scored(self) -> "SelectConfig":
        # select_field reads both scoring stages' outputs, whichever field method it runs
        if self.field_methods and set(self.field_scorers) != {"ifd", "less"}:
            raise ValueError(f"select.field_methods {self.field_methods} need select.field_scorers: [ifd, less] "
                             f"(got {self.field_scorers})")
        return self

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one seed")
        return v


def budget_count(fraction: float, n_pool: int) -> int:
    """ARCHITECTURE.md: ``n = round(budget * N)``, at least 1 (and at most N)."""
    return min(n_pool, max(1, round(fraction * n_pool)))


def subset_dirname(budget: float, seed: int) -> str:
    """Folder of one selection under ``selections/<method>/``: ``b0.15_s0``, ``b1.0_s3``."""
    return f"b{float(budget)}_s{int(seed)}"


def compared_methods(params_path, chosen: list[str] | None = None) -> list[str]:
    """The methods a grid stage works on: ``chosen`` if given, else ``select.methods`` followed
    by ``select.field_methods`` (those not already listed)."""
    if chosen:
        return list(chosen)
    from selfilter.config import load_section

    cfg = load_section("select", SelectConfig, params_path)
    return list(cfg.methods) + [m for m in cfg.field_methods if m not in cfg.methods]
