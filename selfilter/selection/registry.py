"""Selection methods by name.

A method is a function ``(inputs, budget_n, seed, options) -> Picked`` plus what it may read.
``SelectionInputs`` loads each array only when a method asks for it and refuses inputs the
method did not declare, so e.g. only the ``oracle_*`` controls can ever see the hidden labels.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from dataclasses import field as dc_field

import numpy as np

from selfilter.selection import baselines, field
from selfilter.selection.greedy import diverse_greedy
from selfilter.selection.guard import guarded_greedy

# Input names a method may declare.
DIFFICULTY_SCORES = "difficulty:scores"  # stage-1 difficulty, scores setting  [N] float
DIFFICULTY_CLIP = "difficulty:clip"  # stage-1 difficulty, clip setting  [N] float
FEATURES = "features"  # CLIP features [N, 2D] float32
JUDGE = "judge"  # judge rating [N] float
EL2N = "el2n"  # EL2N score [N] float
CLEAN = "clean"  # hidden: is the record clean [N] bool (controls only)
SCENE_SIZE = "scene_size"  # hidden: objects in the record's scene annotation [N] int (controls only)
CLIP_SCORE = "clip_score"  # CLIP image-text cosine [N] float (features/scores.parquet)
IFD = "ifd"  # Instruction-Following Difficulty [N] float, NaN where undefined (ifd/scores.parquet)
ACTIVATIONS = "activations"  # reference-VLM multi-layer activations [N, L*H] float (ifd/activations.npy)
LESS = "less"  # LESS gradient-feature cosine to the target set [N] float (less/scores.parquet)


class InputNotAllowed(PermissionError):
    """A method asked for an input it did not declare."""


class OptionNotDeclared(AttributeError):
    """A method read a ``select`` option it did not declare (its DVC stage would not rerun when
    that option changes, so the read is refused rather than silently going stale)."""


class SelectionInputs:
    """Per-record arrays, row-aligned with records.jsonl, each loaded on first use.

    ``loaders`` maps an input name to a zero-argument function returning the array; ``allowed``
    limits what may be read (a method's declared needs). ``loaded`` records what was read.
    """

    def __init__(self, n_pool: int, loaders: dict[str, Callable[[], np.ndarray]],
                 allowed: frozenset[str] | None = None):
        self.n_pool = int(n_pool)
        self._loaders = dict(loaders)
        self._allowed = allowed
        self._cache: dict[str, np.ndarray] = {}
        self.memo: dict[tuple, np.ndarray] = {}  # derived per-record scores a method reuses across budgets

    @property
    def loaded(self) -> frozenset[str]:
        return frozenset(self._cache)

    def restricted(self, allowed: frozenset[str]) -> SelectionInputs:
        view = SelectionInputs(self.n_pool, self._loaders, frozenset(allowed))
        view.memo = self.memo  # shared: a derived score survives across the budgets of a sweep
        return view

    def get(self, name: str) -> np.ndarray:
        if self._allowed is not None and name not in self._allowed:
            raise InputNotAllowed(f"input '{name}' was not declared by this method "
                                  f"(declared: {sorted(self._allowed)})")
        if name not in self._cache:
            if name not in self._loaders:
                raise KeyError(f"input '{name}' is needed but was not provided")
            arr = np.asarray(self._loaders[name]())
            if arr.shape[0] != self.n_pool:
                raise ValueError(f"input '{name}' has {arr.shape[0]} rows, the pool has {self.n_pool}")
            self._cache[name] = arr
        return self._cache[name]


@dataclass(frozen=True)
class SelectOptions:
    """Plain method options (built from the ``select`` params section by the stage)."""

    k_nearest: int = 10
    gamma: float = 1.0
    penalty: str = "reference"
    device: str = "cpu"
    backend: str = "auto"
    precision: str = "auto"
    n_clusters: int = 100
    semdedup_threshold: float | None = None
    coincide_clusters: int = 100
    coincide_temperature: float = 0.1
    coincide_kernel_width: float = 1.0
    guard_fence: float = 1.5
    show_progress: bool = False


# Options every Self-Filter variant with the diversity penalty reads. device/backend/precision
# never change the picks (docs/METHOD.md) but they choose the code path, so a change reruns.
_PENALTY_OPTIONS = ("k_nearest", "gamma", "penalty", "device", "backend", "precision")


class DeclaredOptions:
    """A read-only view of :class:`SelectOptions` that lets a method read only the options it
    declared (``show_progress`` is always readable: it changes no output)."""

    def __init__(self, options: SelectOptions, declared: tuple[str, ...], method: str):
        self._options, self._declared, self._method = options, frozenset(declared) | {"show_progress"}, method

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._declared:
            raise OptionNotDeclared(f"method '{self._method}' read select.{name}, which it does not declare "
                                    f"(declared: {sorted(self._declared - {'show_progress'})})")
        return getattr(self._options, name)


@dataclass(frozen=True)
class Picked:
    """Selected rows in rank/pick order, and the score each had when it was ranked/picked
    (NaN for rules without a score)."""

    indices: np.ndarray
    scores: np.ndarray
    stats: dict = dc_field(default_factory=dict)  # how the method ran (Self-Filter: index backend, lists, ...)


@dataclass(frozen=True)
class Method:
    name: str
    needs: tuple[str, ...]
    select: Callable[[SelectionInputs, int, int, SelectOptions], Picked]
    description: str
    deterministic: bool = False  # same subset for every seed
    control: bool = False  # reads hidden labels: reported as a control, never as a method
    budgets: tuple[float, ...] | None = None  # fixed budgets overriding params (full: 1.0)
    # The ``select`` options (SelectOptions fields) the method reads: the select_params stage
    # writes exactly these per method, so `dvc exp run -S select.gamma=...` reruns only the
    # methods that read gamma. Reading anything else raises OptionNotDeclared.
    options: tuple[str, ...] = ()


def _self_filter(difficulty_input: str, *, no_div: bool = False, easiest: bool = False):
    def select(inputs: SelectionInputs, budget_n: int, seed: int, o: SelectOptions) -> Picked:
        d = inputs.get(difficulty_input).astype(np.float64)
        if easiest:
            d = -d
        if no_div:  # hardest first: no neighbours, so none of the penalty's options apply
            res = diverse_greedy(d, None, budget_n, k_nearest=0, show_progress=o.show_progress)
        else:
            res = diverse_greedy(d, inputs.get(FEATURES), budget_n, k_nearest=o.k_nearest, gamma=o.gamma,
                                 penalty=o.penalty, device=o.device, backend=o.backend,
                                 precision=o.precision, show_progress=o.show_progress)
        return Picked(res.indices, res.scores, dict(res.stats))

    return select


def _guarded(inputs: SelectionInputs, budget_n: int, seed: int, o: SelectOptions) -> Picked:
    res = guarded_greedy(inputs.get(DIFFICULTY_CLIP).astype(np.float64), inputs.get(FEATURES), budget_n,
                         fence=o.guard_fence, k_nearest=o.k_nearest, gamma=o.gamma, penalty=o.penalty,
                         device=o.device, backend=o.backend, precision=o.precision, show_progress=o.show_progress)
    return Picked(res.indices, res.scores, dict(res.stats))


def _unscored(indices: np.ndarray) -> Picked:
    return Picked(indices, np.full(len(indices), np.nan))


def _scored(scores: np.ndarray, budget_n: int, seed: int) -> Picked:
    idx = baselines.top_k(scores, budget_n, seed)
    return Picked(idx, np.asarray(scores, dtype=np.float64)[idx])


def _prototypicality(inputs: SelectionInputs, budget_n: int, seed: int, o: SelectOptions) -> Picked:
    # The k-means scores depend on the seed, not the budget: a budget sweep fits once per seed.
    key = ("prototypicality", o.n_clusters, seed)
    if key not in inputs.memo:
        inputs.memo[key] = baselines.prototypicality_scores(inputs.get(FEATURES), o.n_clusters, seed)
    return _scored(inputs.memo[key], budget_n, seed)


def _semdedup(inputs: SelectionInputs, budget_n: int, seed: int, o: SelectOptions) -> Picked:
    # the redundancy scores depend on the seed (k-means), not on the budget or threshold
    key = ("semdedup", o.n_clusters, seed)
    if key not in inputs.memo:
        inputs.memo[key] = field.semdedup_redundancy(inputs.get(FEATURES), o.n_clusters, seed, device=o.device)
    idx = field.semdedup(inputs.get(FEATURES), budget_n, n_clusters=o.n_clusters,
                         threshold=o.semdedup_threshold, seed=seed, redundancy=inputs.memo[key])
    return Picked(idx, inputs.memo[key][idx])


def _ifd(inputs: SelectionInputs, budget_n: int, seed: int, o: SelectOptions) -> Picked:
    ifd = inputs.get(IFD)
    idx = field.ifd_select(ifd, budget_n, seed)
    return Picked(idx, np.asarray(ifd, dtype=np.float64)[idx])


def _coincide(inputs: SelectionInputs, budget_n: int, seed: int, o: SelectOptions) -> Picked:
    idx, scores = field.coincide(inputs.get(ACTIVATIONS), budget_n, n_clusters=o.coincide_clusters,
                                 temperature=o.coincide_temperature, kernel_width=o.coincide_kernel_width,
                                 seed=seed, device=o.device)
    return Picked(idx, scores)


_SF = (FEATURES,)
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("self_filter_scores", (DIFFICULTY_SCORES, *_SF), _self_filter(DIFFICULTY_SCORES),
           "Self-Filter, stage-1 scores setting; diversity penalty on CLIP features", deterministic=True,
           options=_PENALTY_OPTIONS),
    Method("self_filter_clip", (DIFFICULTY_CLIP, *_SF), _self_filter(DIFFICULTY_CLIP),
           "Self-Filter, stage-1 clip setting; diversity penalty on CLIP features", deterministic=True,
           options=_PENALTY_OPTIONS),
    Method("self_filter_nodiv", (DIFFICULTY_CLIP,), _self_filter(DIFFICULTY_CLIP, no_div=True),
           "ablation: clip-setting difficulty, no diversity penalty (k = 0: hardest first)",
           deterministic=True),
    Method("self_filter_easiest", (DIFFICULTY_CLIP, *_SF), _self_filter(DIFFICULTY_CLIP, easiest=True),
           "ablation: clip-setting difficulty negated (easiest first), same penalty rule",
           deterministic=True, options=_PENALTY_OPTIONS),
    Method("self_filter_guarded", (DIFFICULTY_CLIP, *_SF), _guarded,
           "beyond the paper: clip-setting Self-Filter after setting aside difficulty outliers "
           "(Tukey's upper fence, select.guard_fence) - the records that look broken",
           deterministic=True, options=(*_PENALTY_OPTIONS, "guard_fence")),
    Method("random", (), lambda i, n, s, o: _unscored(baselines.random_select(i.n_pool, n, s)),
           "uniform sample without replacement"),
    Method("el2n", (EL2N,), lambda i, n, s, o: _scored(i.get(EL2N), n, s),
           "highest EL2N (ties: seeded shuffle)"),
    Method("alpagasus", (JUDGE,), lambda i, n, s, o: _scored(i.get(JUDGE), n, s),
           "highest judge rating (ties: seeded shuffle)"),
    Method("prototypicality", (FEATURES,), _prototypicality,
           "k-means on CLIP features; farthest from the nearest centroid first", options=("n_clusters",)),
    Method("clip_score", (CLIP_SCORE,), lambda i, n, s, o: _scored(i.get(CLIP_SCORE), n, s),
           "highest CLIP image-text similarity (DataComp's CLIP-score filter)"),
    Method("semdedup", (FEATURES,), _semdedup,
           "SemDeDup: k-means on CLIP features, drop within-cluster near-duplicates, random fill",
           options=("n_clusters", "semdedup_threshold", "device")),
    Method("ifd", (IFD,), _ifd,
           "highest Instruction-Following Difficulty among IFD < 1 (Cherry LLM), base model"),
    Method("coincide", (ACTIVATIONS,), _coincide,
           "COINCIDE: spherical k-means on base-model activations, transferability/density shares, "
           "MMD prototypes",
           options=("coincide_clusters", "coincide_temperature", "coincide_kernel_width", "device")),
    Method("less", (LESS,), lambda i, n, s, o: _scored(i.get(LESS), n, s),
           "LESS: highest projected-gradient cosine to a held-out target set"),
    Method("full", (), lambda i, n, s, o: _unscored(baselines.full(i.n_pool)[:n]),
           "the whole pool", deterministic=True, budgets=(1.0,)),
    Method("oracle_clean", (CLEAN,),
           lambda i, n, s, o: _unscored(baselines.oracle_clean(i.get(CLEAN), n, s)),
           "CONTROL: random sample of records known clean from the hidden labels", control=True),
    Method("oracle_hard", (CLEAN, SCENE_SIZE),
           lambda i, n, s, o: _unscored(baselines.oracle_hard(i.get(CLEAN), i.get(SCENE_SIZE), n, s)),
           "CONTROL: records known clean, most crowded scenes first (hidden labels + scene annotations)",
           control=True),
]}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown selection method {name!r}; valid: {', '.join(METHODS)}") from None


def run_method(name: str, inputs: SelectionInputs, budget_n: int, seed: int,
               options: SelectOptions = SelectOptions()) -> Picked:
    """Run a method by name, letting it read only the inputs it declares."""
    method = get_method(name)
    return method.select(inputs.restricted(frozenset(method.needs)), budget_n, seed,
                         DeclaredOptions(options, method.options, method.name))


def options_from_config(cfg, show_progress: bool = False) -> SelectOptions:
    """SelectOptions from a validated ``select`` section (selfilter.selection.config.SelectConfig)."""
    return SelectOptions(**{f.name: getattr(cfg, f.name) for f in fields(SelectOptions) if f.name != "show_progress"},
                         show_progress=show_progress)


def method_params(method: Method, cfg) -> dict:
    """Everything in the ``select`` section that ``method``'s selections depend on: its budgets,
    the seeds and the options it declares. The select_params stage writes this per method; the
    select stage records it in each meta.json."""
    options = options_from_config(cfg)
    return {"budgets": [float(b) for b in (method.budgets or cfg.budgets)], "seeds": [int(s) for s in cfg.seeds],
            "options": {name: getattr(options, name) for name in method.options}}
