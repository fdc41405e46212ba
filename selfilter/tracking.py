"""MLflow lineage: the only module that talks to MLflow.

The final ``track`` stage reads the pipeline's outputs into a :class:`~selfilter.lineage.Lineage`
(:func:`selfilter.lineage.collect_lineage`, which never touches MLflow; that module says what
each run holds) and logs it here (:func:`log_lineage`): one **parent** run per pipeline run
(``selfilter.kind = pipeline``) with nested **stage**, **aggregate** and **comparison** runs.
Policies (docs/mlflow.md):

- **Failure: fail before doing the work.** :func:`connect` probes the store (and a local
  artifact root) first; an unreachable or unwritable store raises :class:`TrackingUnavailable`
  before anything is logged or written. The stage then exits non-zero without writing its out, so
  DVC reruns it next time; no other stage's outputs are touched, because tracking is its own stage.
- **Idempotent**: runs carry ``selfilter.pipeline_digest`` (a digest of dvc.lock without the
  ``track`` stage, else of reports/metrics.json) and a ``selfilter.key``. Re-tracking the same
  outputs reuses the parent with that digest and skips children already FINISHED; children left
  unfinished by a crash are deleted and logged again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfilter.config import Section
from selfilter.holdpoints import armed, hold
from selfilter.lineage import _DIGEST_CHARS, DIGEST, DatasetRef, Lineage, RunRecord, git_commit, mlflow_keys

# The Prefect flow opens a parent run and exports its id here; `track` then nests under it.
PARENT_ENV = "SELFILTER_MLFLOW_PARENT"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

KIND = "selfilter.kind"
KEY = "selfilter.key"
COMPLETE = "selfilter.complete"
PARENT_LOGGED = "selfilter.parent_logged"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
CONTEXT_TAG = "mlflow.data.context"


# MLflow's own limits (mlflow.utils.validation): batch sizes.
_MAX_BATCH = 1000
_MAX_TAGS_PER_BATCH = 100


class TrackingConfig(Section):
    """The ``tracking`` section of params.yaml."""

    enabled: bool = True
    uri: str | None = None  # None -> sqlite:///<root>/mlruns.db; env MLFLOW_TRACKING_URI wins
    artifact_root: str = "mlartifacts"  # for new experiments; relative to the project root
    experiment: str = "selfilter"
    probe_timeout_s: int = 10  # HTTP stores: give up quickly instead of retrying for minutes


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or written; nothing was logged."""


# --------------------------------------------------------------------------------------------
# The store: connect (with the fail-first probe), then log.
# --------------------------------------------------------------------------------------------
def resolve_uri(uri: str | None, root: str | Path) -> str:
    """Env ``MLFLOW_TRACKING_URI`` > ``tracking.uri`` > ``sqlite:///<root>/mlruns.db``."""
    env = os.environ.get(TRACKING_URI_ENV)
    if env:
        return env
    if uri:
        return uri
    return f"sqlite:///{Path(root).resolve() / 'mlruns.db'}"


LOCAL_UI = "http://127.0.0.1:5000"  # `make mlflow-ui`


def ui_link(uri: str, experiment_id: str, kind: str, order_by: str | None = "overall") -> str:
    """A deep link into the MLflow UI's runs table (MLflow 3's URL state: ``searchFilter``,
    ``orderByKey``, ``orderByAsc``): the runs tagged ``selfilter.kind = kind``, highest
    ``order_by`` metric first. An HTTP store is its own UI; a local store is browsed with
    ``make mlflow-ui``."""
    from urllib.parse import quote

    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    base = re.sub(r"//[^/@]*@", "//", base)  # never print credentials
    query = f"searchFilter={quote(f'tags.`{KIND}` = {chr(39)}{kind}{chr(39)}', safe='')}"
    if order_by:
        query += f"&orderByKey={quote(f'metrics.`{order_by}`', safe='')}&orderByAsc=false"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def ui_links(uri: str, experiment_id: str) -> dict[str, str]:
    """The aggregates ranked by overall, and the per-seed runs (:func:`ui_link`)."""
    return {"ranking": ui_link(uri, experiment_id, "aggregate"), "seeds": ui_link(uri, experiment_id, "comparison")}


def redact_uri(uri: str) -> str:
    """The URI without any ``user:password@`` (it ends up in metrics files and logs)."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Tracker:
    """An MLflow client bound to one experiment. Build it with :func:`connect`."""

    def __init__(self, client: Any, experiment_id: str, uri: str):
        self.client = client
        self.experiment_id = experiment_id
        self.uri = uri

    # -- runs ---------------------------------------------------------------------------------
    def create_run(self, name: str, tags: Mapping[str, str], parent_id: str | None = None) -> str:
        tags = dict(tags)
        if parent_id:
            tags[PARENT_TAG] = parent_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def find_runs(self, **tags: str) -> list[Any]:
        """Runs of the experiment whose tags equal ``tags`` (keys with dots: pass a dict)."""
        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        return list(self.client.search_runs([self.experiment_id], " and ".join(clauses), max_results=50000))

    def finish(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    # -- content ------------------------------------------------------------------------------
    def log(self, run_id: str, record: RunRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        keys = mlflow_keys(list(record.metrics) + list(record.curves))
        metrics = [Metric(keys[k], v, now, 0) for k, v in record.metrics.items()]
        for k, series in record.curves.items():
            metrics += [Metric(keys[k], v, now, step) for step, v in series]
        pkeys = mlflow_keys(list(record.params))
        params = [Param(pkeys[k], v) for k, v in record.params.items()]
        tkeys = mlflow_keys(list(record.tags))
        tags = [RunTag(tkeys[k], v) for k, v in record.tags.items()]
        # One request per run when it fits MLflow's batch limits (each is a store transaction).
        if len(params) <= _MAX_TAGS_PER_BATCH and len(tags) <= _MAX_TAGS_PER_BATCH and \
                len(params) + len(tags) + len(metrics) <= _MAX_BATCH:
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        else:
            for i in range(0, len(params), _MAX_TAGS_PER_BATCH):
                self.client.log_batch(run_id, params=params[i:i + _MAX_TAGS_PER_BATCH])
            for i in range(0, len(tags), _MAX_TAGS_PER_BATCH):
                self.client.log_batch(run_id, tags=tags[i:i + _MAX_TAGS_PER_BATCH])
            for i in range(0, len(metrics), _MAX_BATCH):
                self.client.log_batch(run_id, metrics=metrics[i:i + _MAX_BATCH])
        json_artifacts = dict(record.json_artifacts)
        renamed = {k: v for k, v in {**keys, **pkeys}.items() if k != v}
        if renamed:  # keep the original names findable next to their MLflow keys
            json_artifacts["key_names.json"] = renamed

        for path, artifact_dir in record.artifacts:
            self.client.log_artifact(run_id, str(path), artifact_dir)
        if record.histograms or json_artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                for name, values in record.histograms.items():
                    _histogram_png(values, Path(tmp) / name, title=name.removesuffix(".png"))
                    self.client.log_artifact(run_id, str(Path(tmp) / name), "plots")
                for name, content in json_artifacts.items():
                    (Path(tmp) / name).write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
                    self.client.log_artifact(run_id, str(Path(tmp) / name))
        if record.datasets:
            self.log_datasets(run_id, record.datasets)

    def log_datasets(self, run_id: str, datasets: list[tuple[DatasetRef, str]]) -> None:
        """``log_input`` for files: a metadata-only dataset whose digest is the file's sha256
        (truncated to the store's 32 characters; the full one is in the profile)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for ref, context in datasets:
            profile = {"sha256": ref.sha256}
            if ref.num_rows is not None:
                profile["num_rows"] = ref.num_rows
            ds = Dataset(name=ref.name, digest=ref.sha256[:_DIGEST_CHARS], source_type="local",
                         source=json.dumps({"uri": str(ref.path.resolve())}), profile=json.dumps(profile))
            inputs.append(DatasetInput(ds, [InputTag(CONTEXT_TAG, context)]))
        self.client.log_inputs(run_id, datasets=inputs)


def connect(uri: str, experiment: str, artifact_location: str | None = None,
            timeout_s: int = 10) -> Tracker:
    """Open the store and the experiment, or raise :class:`TrackingUnavailable` - before any
    work is done (the fail-first policy). HTTP stores get no retries and a short timeout here,
    so a closed port fails in seconds rather than after MLflow's default minutes of retries."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    local_art = _local_path(artifact_location)
    try:
        if uri.startswith("sqlite:///") and armed("tracking.store_statement"):  # test-only kill point
            _hold_on_each_statement(Path(uri.removeprefix("sqlite:///")).parent, "tracking.store_statement")
        create_sqlite_store(uri)
        with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s)):
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
            elif exp.lifecycle_stage == "deleted":
                raise TrackingUnavailable(
                    f"MLflow experiment '{experiment}' at {redact_uri(uri)} is deleted; restore it "
                    f"(mlflow experiments restore) or set tracking.experiment to another name")
            else:
                exp_id = exp.experiment_id
                local_art = _local_path(exp.artifact_location)
        if local_art is not None:  # a local artifact root must be writable too
            local_art.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=local_art, prefix=".probe"):
                pass
    except TrackingUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, sqlalchemy, requests, OSError: each store fails its own way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingUnavailable(f"MLflow store {redact_uri(uri)} is not usable: {redact_uri(first)[:300]}") from None
    return Tracker(client, exp_id, uri)


def create_sqlite_store(uri: str) -> None:
    """Create a missing sqlite store whole: migrate the schema in a temporary file, then link
    it into place. MLflow migrates a new store in many transactions; a process killed half-way
    (a SIGKILLed ``track``) would leave a file that every later run fails on ("table ...
    already exists"). Another process that created the store first wins; this one's is dropped."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
        os.link(tmp, path)  # no-clobber, unlike a rename
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _hold_on_each_statement(folder: Path, point: str) -> None:
    """Test-only (selfilter/holdpoints.py): ``hold(point)`` after each SQL statement run on a
    sqlite file in ``folder`` - MLflow's migration of a new store is ~1,700 of them."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def after(conn, *_):
        if conn.engine.url.database and Path(conn.engine.url.database).parent == folder:
            hold(point)
    event.listen(Engine, "after_cursor_execute", after)


def _local_path(location: str | None) -> Path | None:
    if not location:
        return None
    if location.startswith("file://"):
        from urllib.parse import unquote, urlparse
        return Path(unquote(urlparse(location).path))
    if "://" in location:
        return None
    return Path(location)


def connect_config(cfg: TrackingConfig, root: str | Path) -> Tracker:
    art = Path(cfg.artifact_root)
    art = art if art.is_absolute() or "://" in cfg.artifact_root else Path(root).resolve() / art
    return connect(resolve_uri(cfg.uri, root), cfg.experiment,
                   str(art) if "://" in cfg.artifact_root else art.as_uri(), cfg.probe_timeout_s)


def _histogram_png(values: list[float], path: Path, title: str) -> None:
    # The object API (no pyplot): no global figure state, no GUI backend, cheaper import.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = [v for v in values if math.isfinite(v)]
    ax.hist(finite, bins=min(50, max(5, int(math.sqrt(len(finite) or 1)))), color="#4477aa")
    ax.set_xlabel("difficulty (= -score-net output; high = hard)")
    ax.set_ylabel("samples")
    ax.set_title(f"{title} (n={len(finite)})")
    fig.tight_layout()
    fig.savefig(path)


# --------------------------------------------------------------------------------------------
# Logging a pipeline run.
# --------------------------------------------------------------------------------------------
@dataclass
class TrackResult:
    status: str  # "logged" | "already_tracked"
    parent_run_id: str
    pipeline_digest: str
    created: dict[str, str]  # key -> run id, runs logged now
    skipped: dict[str, str]  # key -> run id, FINISHED runs from an earlier attempt


def log_lineage(tracker: Tracker, lineage: Lineage, parent_run_id: str | None = None,
                progress: bool = True) -> TrackResult:
    """Log ``lineage`` as a parent run with nested stage and comparison runs, idempotently.

    With ``parent_run_id`` (a Prefect flow's run), nest under it and leave it open: the flow
    closes it. Otherwise find or create the parent for this pipeline digest and close it.
    """
    from tqdm import tqdm

    digest = lineage.digest
    own_parent = parent_run_id is None
    if own_parent:
        previous = tracker.find_runs(**{KIND: "pipeline", DIGEST: digest})
        done = [r for r in previous if r.data.tags.get(COMPLETE) == "true"]
        if done:
            return TrackResult("already_tracked", done[0].info.run_id, digest, {}, {})
        if previous:  # an attempt that crashed: resume it
            parent_run_id = previous[0].info.run_id
            tracker.client.update_run(parent_run_id, status="RUNNING")
        else:
            parent_run_id = tracker.create_run(lineage.parent.name, {KIND: "pipeline", DIGEST: digest})
    else:
        from mlflow.exceptions import MlflowException

        try:
            tracker.client.get_run(parent_run_id)
        except MlflowException:
            raise TrackingUnavailable(f"{PARENT_ENV}={parent_run_id}: no such MLflow run at "
                                      f"{redact_uri(tracker.uri)}") from None

    existing = {}
    for r in tracker.find_runs(**{PARENT_TAG: parent_run_id, DIGEST: digest}):
        key = r.data.tags.get(KEY)
        if key and r.info.status == "FINISHED":
            existing[key] = r.info.run_id
        elif key:  # left RUNNING/FAILED by an interrupted attempt: log it again from scratch
            tracker.client.delete_run(r.info.run_id)

    created: dict[str, str] = {}
    skipped: dict[str, str] = {}
    try:
        # The parent's content is logged once; the tag goes on last so a crash mid-way redoes it.
        if tracker.client.get_run(parent_run_id).data.tags.get(PARENT_LOGGED) != digest:
            tracker.log(parent_run_id, lineage.parent)
            tracker.client.set_tag(parent_run_id, PARENT_LOGGED, digest)
        children = lineage.stages + lineage.aggregates + lineage.comparisons
        for rec in tqdm(children, desc="mlflow runs", unit="run", disable=not progress):
            if rec.key in existing:
                skipped[rec.key] = existing[rec.key]
                continue
            # Children carry the commit and digest; the (possibly hundreds of) stage hashes
            # live on the parent only.
            tags = {k: v for k, v in lineage.tags.items() if not k.startswith("dvc.stage.")}
            tags.update({**rec.tags, KIND: rec.kind, KEY: rec.key, DIGEST: digest})
            run_id = tracker.create_run(rec.name, tags, parent_id=parent_run_id)
            hold("track.run_opened")  # test-only kill point (selfilter/holdpoints.py); off unless the suite sets it
            try:
                tracker.log(run_id, dataclasses.replace(rec, tags={}))
            except BaseException:
                tracker.finish(run_id, ok=False)
                raise
            tracker.finish(run_id)
            created[rec.key] = run_id
        tracker.client.set_tag(parent_run_id, COMPLETE, "true")
    except BaseException:
        if own_parent:
            tracker.finish(parent_run_id, ok=False)
        raise
    if own_parent:
        tracker.finish(parent_run_id)
    return TrackResult("logged", parent_run_id, digest, created, skipped)


@contextlib.contextmanager
def pipeline_run(root: str | Path = ".", params_path: str | Path = "params.yaml",
                 run_name: str = "pipeline", tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Open a parent run for a pipeline run driven from Python (a Prefect flow).

    Yields the run id and exports it as ``SELFILTER_MLFLOW_PARENT`` for the duration, so the
    ``track`` stage that the flow runs (as a subprocess, e.g. through ``dvc repro``) nests its
    runs under this parent. The store is probed on entry: an unusable store raises
    :class:`TrackingUnavailable` before the flow does any work. The run ends FINISHED, or FAILED
    if the block raises.
    """
    from selfilter.config import load_section

    cfg = load_section("tracking", TrackingConfig, Path(root) / params_path if not Path(params_path).is_absolute() else params_path)
    tracker = connect_config(cfg, root)
    run_tags = {KIND: "pipeline", "git.commit": git_commit(Path(root)), **(tags or {})}
    run_tags["mlflow.source.git.commit"] = run_tags["git.commit"].removesuffix("+dirty")
    run_id = tracker.create_run(run_name, run_tags)
    ok = False
    try:
        with _env(**{PARENT_ENV: run_id, TRACKING_URI_ENV: tracker.uri}):
            yield run_id
        ok = True
    finally:
        tracker.finish(run_id, ok=ok)
