"""The ``data`` section of params.yaml: where the pool comes from, the shapes generator, ingest.

``source: shapes`` generates the embedded dataset (``selfilter.data.shapes``) and ingests it;
``source: llava`` ingests ``annotations`` (LLaVA-format JSON/JSONL) with images under
``image_dir``. ``image_dir`` is also what later stages (features, training) resolve record image
paths against, so with ``source: shapes`` it must be the shapes folder (``data/shapes``).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from selfilter.config import Section

# Pixels above which an image is treated as a decompression bomb. LLaVA's COCO images are
# ~0.3 MP and the largest images in the 665K mix are well under 40 MP; PIL's own default warning
# threshold is ~89 MP, too late for a 24 GiB machine decoding in several workers.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


class CategoryMix(Section):
    """Share of each LLaVA-Instruct category in the generated pool (normalised to sum 1)."""

    conversation: float = Field(0.5, ge=0)
    detail: float = Field(0.2, ge=0)
    reasoning: float = Field(0.3, ge=0)

    @model_validator(mode="after")
    def _some_mass(self) -> CategoryMix:
        if self.conversation + self.detail + self.reasoning <= 0:
            raise ValueError("at least one category needs a positive share")
        return self


class ImperfectionRates(Section):
    """Fraction of the pool given each imperfection kind (exclusive; the rest is clean)."""

    wrong_answer: float = Field(0.25, ge=0, le=1)
    near_duplicate: float = Field(0.10, ge=0, le=1)
    low_information: float = Field(0.10, ge=0, le=1)
    truncated: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _leave_clean_samples(self) -> ImperfectionRates:
        total = self.wrong_answer + self.near_duplicate + self.low_information + self.truncated
        if total >= 1:
            raise ValueError(f"imperfection rates sum to {total:.2f}; they must leave clean samples (< 1)")
        return self


class BenchSizes(Section):
    """Number of held-out benchmark questions (each on its own held-out scene)."""

    vqa: int = Field(200, ge=0)
    pope_per_split: int = Field(100, ge=0)
    count: int = Field(100, ge=0)
    desc: int = Field(50, ge=0)
    binding: int = Field(0, ge=0)   # diagnostic object-binding questions (task shapes_binding, outside overall)


class ShapesConfig(Section):
    seed: int = 0
    pool_size: int = Field(4000, ge=1)
    image_size: int = Field(32, ge=24, le=128)
    max_objects: int = Field(6, ge=1, le=9)
    categories: CategoryMix = CategoryMix()
    imperfections: ImperfectionRates = ImperfectionRates()
    bench: BenchSizes = BenchSizes()


class DataConfig(Section):
    source: Literal["shapes", "llava"] = "shapes"
    annotations: str | None = None
    image_dir: str = "data/shapes"
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    # processes decoding images at ingest: LLaVA-665K's ~0.5M images are the cost of `prepare`
    ingest_workers: int = Field(1, ge=1)
    shapes: ShapesConfig = ShapesConfig()

    @model_validator(mode="after")
    def _llava_needs_annotations(self) -> DataConfig:
        if self.source == "llava" and not self.annotations:
            raise ValueError("source 'llava' needs 'annotations' (path of the LLaVA-format JSON/JSONL)")
        return self
