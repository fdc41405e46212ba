"""The ``data`` section of params.yaml: where the pool comes from, the shapes generator, ingest.

Every source goes through the same stages. ``generate`` runs the embedded generator when
``source: shapes`` (it writes ``data/shapes``: a LLaVA-format ``train.json``, its images, scene
annotations, hidden imperfection labels and the shapes benchmark) and writes only a marker
otherwise. ``prepare`` then ingests ``annotations`` with images under ``image_dir`` - the
generator's files or yours - and writes the pool: the selectable records, the held-out benchmark
records (``heldout``) and ``source.json``, which says what the data has (scene annotations,
hidden labels, which benchmark). ``image_dir`` is also what later stages resolve record image
paths against.
"""
from __future__ import annotations

from pathlib import Path
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
    # 0: scenes of 1..max_objects objects equally often (the default pool). > 0: mostly 1-2
    # objects and a thin tail of crowded, hard scenes (shapes.object_count_weights); benchmark uniform.
    difficulty_skew: float = Field(0.0, ge=0, le=5)
    categories: CategoryMix = CategoryMix()
    imperfections: ImperfectionRates = ImperfectionRates()
    bench: BenchSizes = BenchSizes()


class HeldOutSplit(Section):
    """The benchmark of a dataset without one: a seeded split of its own records, never selectable.

    Whole pictures are held out (every record of a held-out image leaves the pool), so no
    benchmark picture is ever trained on. Text-only records always stay in the pool.
    """

    fraction: float = Field(0.1, ge=0, lt=1)    # of the distinct images
    max_images: int = Field(500, ge=0)          # cap: a 665K pool needs a few hundred, not 60K
    min_images: int = Field(8, ge=0)            # fewer than this: refuse (a benchmark of 3 pictures measures nothing)
    seed: int = 0


class DataConfig(Section):
    source: Literal["shapes", "llava"] = "shapes"
    annotations: str | None = None   # llava: your LLaVA-format file (shapes: data/shapes/train.json)
    image_dir: str = "data/shapes"
    # Optional side files of your own data (the shapes generator writes its own): scene
    # annotations ({"image", "objects"} per line) for the offline annotation judge, and hidden
    # imperfection labels ({"id", "kind"}; kind "clean" or a defect) for the oracle_clean control
    # and the report's known-imperfect columns. null: the data has none, and what needs them is
    # left out with one line saying so.
    scenes: str | None = None
    hidden_labels: str | None = None
    # The benchmark: auto = the shapes benchmark for source shapes, a held-out split of your own
    # records for source llava; heldout / none force one (none: only evaluate.tasks you name,
    # e.g. lmms-eval's standard tasks).
    benchmark: Literal["auto", "heldout", "none"] = "auto"
    heldout: HeldOutSplit = HeldOutSplit()
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    # processes decoding images at ingest: LLaVA-665K's ~0.5M images are the cost of `prepare`
    ingest_workers: int = Field(1, ge=1)
    shapes: ShapesConfig = ShapesConfig()

    @model_validator(mode="after")
    def _source_paths(self) -> DataConfig:
        if self.source == "llava" and not self.annotations:
            raise ValueError("source 'llava' needs 'annotations' (path of the LLaVA-format JSON/JSONL)")
        if self.source == "shapes":
            for key in ("scenes", "hidden_labels"):
                if getattr(self, key) is not None:
                    raise ValueError(f"source 'shapes' writes its own {key}; set data.{key}: null")
        return self

    @property
    def annotations_path(self) -> str:
        return self.annotations or f"{self.image_dir}/train.json"

    def check_generated(self, generated: str | Path) -> None:
        """The paths must agree with where ``generate`` writes (``generated``): the shapes source
        reads the generator's files, and your data must not point into them."""
        gen = Path(generated).resolve()
        ann = Path(self.annotations_path).resolve()
        if self.source == "shapes":
            if Path(self.image_dir).resolve() != gen:
                raise ValueError(f"data.image_dir is {self.image_dir!r} but the shapes dataset is generated to "
                                 f"{str(generated)!r}; set data.image_dir: {generated}")
            if ann != gen / "train.json":
                raise ValueError(f"source 'shapes' ingests the generator's {generated}/train.json, but "
                                 f"data.annotations is {self.annotations!r}; for your own file set data.source: llava")
        elif ann.is_relative_to(gen):
            raise ValueError(f"source 'llava' but data.annotations is {self.annotations!r}, inside the shapes "
                             f"generator's folder; set data.annotations to your LLaVA-format file and "
                             f"data.image_dir to its image folder")
