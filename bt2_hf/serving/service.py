"""The search service behind ``bt2 serve``, without HTTP: galleries of a root, query models, dual-write, backfill jobs.

Concurrency (one process, many threads):

- each served gallery directory has a :class:`~bt2_hf.utils.locks.ReadWriteLock`: a search reads the gallery's
  state under the read side; a backfill batch's commit and the swap of a dual-written gallery take the write side,
  so no search sees half of a change (an item twice, or a slot without its re-embedded item);
- each also has a mutation lock, held by the backfill worker for one chunk (but not while the model embeds the
  chunk's rows nor while they are written to the backfill's table: a dual-write then waits for a commit, never for
  a model or for those fsyncs) and by a dual-write for its whole append
  (files, manifest, then the open gallery under the write side): their changes never interleave, and a chunk's
  commit counts the items appended while it was embedded;
- cutover and rollback rewrite the alias table (one rename); a search already holding the previous gallery finishes
  on it, the next one resolves the alias again.

The galleries are a folder of faiss gallery directories, or the collections of a Milvus URI (a milvus-lite ``.db``
file or a server's ``http://host:port``): :func:`~bt2_hf.galleries.aliases.open_gallery_root` picks the one switch,
and aliases are then the folder's ``aliases.json`` or Milvus's own collection aliases. On Milvus, dual-write
(``add_items``) is refused (items go in through Milvus's client), and a backfill job is not recorded for restarts
(there is no folder to record it in): its progress lives in the collection, so starting it again after a restart
continues at the last committed batch.

Backfill jobs are recorded in ``<root>/.bt2-serve/backfill_jobs.json`` and restarted when the service starts again
(after a crash, at the gallery's last committed batch).
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BT2InputError
from ..galleries.aliases import GalleryRoot, check_name, open_gallery_root
from ..utils.io import atomic_write_json
from ..utils.locks import ReadWriteLock
from .batching import TextBatcher
from .priority import BackfillPriority, SearchTraffic

logger = logging.getLogger(__name__)

JOBS_FILE = ".bt2-serve/backfill_jobs.json"
MAX_K = 1000
MAX_PIXELS = 40_000_000  # a small compressed file can decode into gigabytes: its size is checked first


class ServingError(BT2InputError):
    """A request the service cannot answer as asked; ``status`` is the HTTP status that says why."""

    def __init__(self, problem: str, status: int = 400):
        super().__init__(problem)
        self.status = status


def default_rule() -> str:
    """The name of the ranking rule :func:`~bt2_hf.galleries.search_gallery` applies by default (the galleries' own
    choice, reported in each answer; the service passes no rule unless told one)."""
    import inspect

    from ..galleries.mixed import search_gallery

    parameter = inspect.signature(search_gallery).parameters.get("rule")
    return str(parameter.default) if parameter is not None and parameter.default is not inspect.Parameter.empty \
        else "default"  # fmt: skip


@dataclass
class LoadedModel:
    name: str
    path: str
    model: object

    @property
    def config(self):
        return self.model.config

    @property
    def fingerprint(self) -> str:
        return self.model.config.fingerprint

    @property
    def modality(self) -> str:
        return getattr(self.model, "modality", "image")


class ModelRegistry:
    """The query models the service may embed with, by name (``NAME=PATH`` or the folder's name) or fingerprint."""

    def __init__(self):
        self.models: dict[str, LoadedModel] = {}

    def load(self, spec: str) -> LoadedModel:
        from .. import BT2Model

        name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec.rstrip("/")).name, "", spec)
        check_name(name)
        for loaded in self.models.values():
            if loaded.path == path:
                return loaded
        model = BT2Model.from_pretrained(path).eval()
        loaded = LoadedModel(name, path, model)
        self.models[name] = loaded
        logger.info("Loaded query model %s (%s) from %s", name, model.config.fingerprint.split(":")[-1][:12], path)
        return loaded

    def get(self, key: str) -> LoadedModel:
        """A model by name, or by fingerprint (in full or its first 12+ characters)."""
        if key in self.models:
            return self.models[key]
        if isinstance(key, str) and len(key) >= 12:
            for loaded in self.models.values():
                if loaded.fingerprint.startswith(key) or loaded.fingerprint.split(":")[-1].startswith(key):
                    return loaded
        known = [f"{m.name} ({m.fingerprint[:12]})" for m in self.models.values()]
        raise ServingError(f"Unknown model {key!r}: this service has {known or 'no models'} (start it with --model).",
                           404)  # fmt: skip

    def by_fingerprint(self, fingerprint: str) -> LoadedModel | None:
        return next((m for m in self.models.values() if m.fingerprint == fingerprint), None)


@dataclass
class ServedGallery:
    """A gallery the service has open (a directory of the root, or a Milvus collection), with the locks that order
    searches and writes on it."""

    name: str
    store: object
    rw: ReadWriteLock = field(default_factory=ReadWriteLock)
    mutation: threading.Lock = field(default_factory=threading.Lock)
    job: BackfillJob | None = None
    warming: threading.Thread | None = None  # the build of its search over re-embedded rows, when it was opened
    # per query model (None: the gallery encoder): (store, manifest, config, PreparedSearch or None) as decided on them
    prepared: dict = field(default_factory=dict)


class _GalleryReopened(Exception):
    """A backfill chunk's gallery object was replaced (reopened by a dual-write) while the job let writes in."""


class CommitsUnderWriteLock:
    """The store as :func:`~bt2_hf.galleries.backfill` sees it: every change of its state is taken under the write
    side of the gallery's lock, so a search never reads the state half-way through a batch.

    With ``served`` (the job's gallery, whose mutation lock the caller holds), a batch's rows are written and fsynced
    without the mutation lock: a dual-write meanwhile waits only for the commit itself. ``before_step`` (a callable,
    e.g. a low-priority job's wait for quiet search traffic) runs before each step of a commit, so that no step starts
    while searches are arriving; with ``slice_size``, a batch's rows are written (and synced) that many at a time,
    each a step of its own.
    """

    def __init__(self, store, rw: ReadWriteLock, served: ServedGallery | None = None, before_step=None,
                 slice_size: int | None = None):  # fmt: skip
        self._store, self._rw, self._served = store, rw, served
        self._before_step = before_step or (lambda: None)
        self._slice_size = slice_size

    def __getattr__(self, name):
        return getattr(self._store, name)

    def __len__(self):
        return len(self._store)

    def write_backfill_batch(self, rows, vectors, done):
        if not hasattr(self._store, "commit_backfill_batch"):  # a Milvus collection: one upsert, then the commit
            self._before_step()
            with self._rw.write():
                self._store.write_backfill_batch(rows, vectors, done)
            return
        # Searches wait only for the switch of the state in memory: the rows (beyond ``done``, read by no search yet)
        # are written, the search over the re-embedded items after this batch is built and the manifest is written
        # before the write side is taken (all under it, it was held 50-175 ms a batch at 100k items, the p99 of
        # every search during a backfill).
        size = self._slice_size or len(rows)
        if self._served is not None:
            # rows beyond ``done`` in the backfill's own table: nothing reads them and a dual-write touches other files
            self._served.mutation.release()
        try:
            for start in range(0, len(rows), size):  # in any number of steps, each after the priority's wait
                self._before_step()
                self._store.write_backfill_rows(rows[start : start + size], vectors[start : start + size])
        finally:
            if self._served is not None:
                self._served.mutation.acquire()
        if self._served is not None and self._served.store is not self._store:
            raise _GalleryReopened
        done = self._done_after(rows, done)
        self._before_step()
        search = self._store.prepare_backfill_search(int(done))
        self._before_step()
        self._store.commit_backfill_batch(done, search, swap=self._rw.write)  # the lock held for the switch only

    def _done_after(self, rows, done: int) -> int:
        """The ``done`` this batch commits. Dual-writes may have appended items while its rows were embedded (the
        job lets them in meanwhile): each counted itself in ``done`` already, ahead of this batch's rows, which are
        still the next ones of the backfill order."""
        current = int(self._store.backfill_state["done"])
        if current + len(rows) != int(done):
            if not np.array_equal(self._store.backfill_order()[current : current + len(rows)], np.asarray(rows)):
                raise ServingError(f"The backfill batch of {len(rows)} rows is not the next in the backfill order of "
                                   f"{self._store.location} (done {current}); it is not committed.", 409)  # fmt: skip
            done = current + len(rows)
        return done

    def start_backfill(self, state, order):
        with self._rw.write():
            self._store.start_backfill(state, order)

    def update_backfill_state(self, **changes):
        if hasattr(self._store, "commit_backfill_batch"):  # a folder's gallery: the manifest written first
            self._store.update_backfill_state(swap=self._rw.write, **changes)
            return
        with self._rw.write():
            self._store.update_backfill_state(**changes)


class BackfillJob:
    """A background thread that runs the crash-safe in-place backfill a chunk at a time beside the searches.

    Its priority (``spec["priority"]``, see :mod:`bt2_hf.serving.priority`): ``"low"`` (the default) embeds and
    writes a batch in slices and, before a slice or a step of a commit that its share of the time (``spec["share"]``,
    default 0.1) owes a wait, waits for the service's searches to be quiet or the wait to be paid: under continuous
    load it takes at most a tenth of the time; ``"normal"`` runs each batch flat out.
    """

    def __init__(self, service: GalleryService, served: ServedGallery, model: LoadedModel, spec: dict):
        self.service, self.served, self.model, self.spec = service, served, model, spec
        self.priority = BackfillPriority.named(spec.get("priority") or "low", spec.get("share"))
        self.status, self.error, self.items_per_second = "starting", None, None
        self.yielded_seconds = 0.0  # time spent waiting for quiet search traffic
        # The share's account: seconds of waiting the job's steps owe the searches (negative: credit earned while
        # idle, e.g. during --backfill_pause), as of ``_owed_at``; the step running now started at ``_step_started``.
        self._owed, self._owed_at, self._step_started = 0.0, None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"backfill-{served.name}", daemon=True)

    def start(self) -> None:
        # refuse a dataset that lacks the gallery's items before the thread starts
        self._embed = self._in_slices(self._embedder())
        self._thread.start()

    def yield_to_searches(self) -> None:
        """Before a step: if the job's steps took more than the priority's share of the time, wait for quiet search
        traffic until they are back within it (a normal-priority job never waits)."""
        if self.priority.share is None:
            return
        self._end_step()
        now = time.monotonic()
        owed = self._owed - (now - self._owed_at) if self._owed_at is not None else self._owed
        if owed > 0:
            self.yielded_seconds += self.service.traffic.wait_quiet(owed, self._stop)
            if not self.service.traffic.busy():  # quiet traffic: nothing to yield to, the debt is forgiven
                self._owed, self._owed_at = 0.0, time.monotonic()
        self._step_started = time.monotonic()

    def _end_step(self) -> None:
        """Account for the step that ends now: the time since the last one paid back what was owed (down to the
        priority's credit), and this one owes its duration × (1 - share) / share."""
        if self._step_started is None:
            return
        now = time.monotonic()
        idle = self._step_started - self._owed_at if self._owed_at is not None else 0.0
        owed = max(-self.priority.credit, self._owed - idle)
        self._owed, self._owed_at = owed + self.priority.wait_after(now - self._step_started), now
        self._step_started = None

    def _in_slices(self, embed_rows):
        """``embed_rows`` a slice of the priority's size at a time, yielding to the searches before each slice."""
        size = self.priority.slice_size
        if not size:
            return embed_rows

        def embed_in_slices(rows: np.ndarray) -> np.ndarray:
            parts = []
            for start in range(0, len(rows), size):
                self.yield_to_searches()
                parts.append(np.asarray(embed_rows(rows[start : start + size]), dtype=np.float32))
            return np.concatenate(parts) if parts else embed_rows(rows)

        return embed_in_slices

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _embedder(self):
        """Gallery rows → the new model's vectors, read from the gallery's dataset by item id."""
        from ..galleries.embed import encode_items
        from ..galleries.sources import open_source

        spec = self.spec
        source = open_source(spec["data"], split=spec.get("split"), column=spec.get("column"),
                             id_column=spec.get("id_column"))  # fmt: skip
        position_of = {}
        for position, item in enumerate(source.ids()):
            position_of[item] = position
            position_of.setdefault(str(item), position)
        store = self.served.store
        state = store.backfill_state
        done = state["done"] if state else 0
        pending = store.backfill_order()[done:] if state else np.arange(len(store))
        missing = [item for item in store.ids_of(pending) if item not in position_of and str(item) not in position_of]
        if missing:
            raise ServingError(f"{len(missing)} items of the gallery (e.g. {missing[:3]}) are not in the dataset "
                               f"{spec['data']}: give the dataset the gallery was embedded from.", 400)  # fmt: skip
        model, batch = self.model.model, int(spec.get("embed_batch_size", 256))

        def embed_rows(rows: np.ndarray) -> np.ndarray:
            ids = self.served.store.ids_of(rows)
            wanted = np.asarray([position_of.get(item, position_of.get(str(item))) for item in ids], dtype=np.int64)
            ordering = np.argsort(wanted, kind="stable")
            vectors = encode_items(model, source.take(wanted[ordering]), batch)
            restored = np.empty_like(vectors)
            restored[ordering] = vectors
            return restored

        return embed_rows

    def _embed_letting_writes_in(self, store):
        """The job's embedder, releasing the gallery's mutation lock while the model embeds a chunk's rows (seconds
        on a CPU): a dual-write waits only for a commit, not for a chunk. The chunk's rows stay the next ones of the
        backfill order whatever is appended meanwhile (appended items count as re-embedded, ahead of them), and the
        commit counts what was appended (:meth:`CommitsUnderWriteLock.write_backfill_batch`)."""
        mutation = self.served.mutation

        def embed_rows(rows: np.ndarray) -> np.ndarray:
            mutation.release()
            try:
                return self._embed(rows)
            finally:
                mutation.acquire()
                if self.served.store is not store:
                    raise _GalleryReopened

        return embed_rows

    def progress(self) -> dict:
        state = self.served.store.backfill_state or {}
        count = len(self.served.store)
        return {"status": self.status, "model": self.model.name, "fingerprint": self.model.fingerprint,
                "done": int(state.get("done", 0)), "count": count, "error": self.error,
                "items_per_second": self.items_per_second, "priority": self.priority.name,
                "yielded_seconds": round(self.yielded_seconds, 3)}  # fmt: skip

    def _run(self) -> None:
        from ..galleries.backfill import backfill
        from ..galleries.embed import model_identity

        identity, chunk = model_identity(self.model.model), int(self.spec.get("batch_size", 1024))
        self.status = "running"
        started, first_done = time.perf_counter(), None
        try:
            while not self._stop.is_set():
                with self.served.mutation:
                    store = self.served.store
                    embed_rows = self._embed_letting_writes_in(store)
                    state = store.backfill_state
                    done, count = (state["done"] if state else 0), len(store)
                    first_done = done if first_done is None else first_done
                    if state and done >= count:
                        break
                    fraction = min(1.0, (done + chunk + 0.5) / count)
                    writer = CommitsUnderWriteLock(store, self.served.rw, self.served, self.yield_to_searches,
                                                   self.priority.slice_size)  # fmt: skip
                    try:
                        backfill(writer, embed_rows=embed_rows, identity=identity, query_config=self.model.config,
                                 fraction=fraction, order=None if state else self.spec.get("order"),
                                 seed=None if state else self.spec.get("seed"), batch_size=chunk,
                                 allow_unmeasured=bool(self.spec.get("allow_unmeasured")),
                                 show_progress=False)  # fmt: skip
                    except _GalleryReopened:
                        continue  # a dual-write reopened the gallery meanwhile: this chunk again, on it
                    now_done = store.backfill_state["done"]
                    self._end_step()  # the batch's last step ends with its commit, not after the pause
                elapsed = time.perf_counter() - started
                self.items_per_second = (now_done - first_done) / elapsed if elapsed > 0 else None
                time.sleep(float(self.spec.get("pause", 0.0)) or 0.001)  # let a waiting dual-write take the lock
            if not self._stop.is_set():
                self.status = "complete"
                self.service.forget_job(self.served.name)
            else:
                self.status = "stopped"
        except Exception as error:  # the service keeps answering; the job says why it stopped
            logger.exception("Backfill of %s stopped", self.served.name)
            self.status, self.error = "failed", f"{type(error).__name__}: {error}"


class GalleryService:
    """Everything ``bt2 serve`` answers, callable without HTTP (the FastAPI app is a thin layer over it).

    Args:
        root (`str` or `os.PathLike`): the gallery root (gallery directories and ``aliases.json``), or a Milvus URI
            (a milvus-lite ``.db`` file, or ``http://host:port`` of a Milvus server) whose collections are served.
        models (`list[str]`, *optional*): query models to load, ``PATH`` or ``NAME=PATH``; listed first = default.
        rule (`str`, *optional*): the ranking rule during a backfill (default: the galleries' default).
        resume_jobs (`bool`, *optional*, defaults to `True`): restart the backfill jobs recorded in the root.
        search_threads (`int`, *optional*, defaults to `1`): OpenMP threads of faiss in each thread that searches.
            One query's search is too small to share: faiss's OpenMP workers would spin on the cores that the other
            requests (and a backfill) need. `None` leaves faiss's default (``OMP_NUM_THREADS`` or every core).
        text_batch_window (`float`, *optional*, defaults to `0.002`): concurrent text queries of a model are embedded
            in one forward pass (:class:`~bt2_hf.serving.batching.TextBatcher`), waiting up to this many seconds for
            each other under load; `None` embeds each text query alone.
    """

    def __init__(self, root, models: list[str] | None = None, rule: str | None = None, resume_jobs: bool = True,
                 search_threads: int | None = 1, text_batch_window: float | None = 0.002):  # fmt: skip
        self.root = open_gallery_root(root)
        # Only a folder can hold the record of backfill jobs to restart; on Milvus a job is started again by hand.
        self._jobs_file = self.root.root / JOBS_FILE if isinstance(self.root, GalleryRoot) else None
        if search_threads is not None and (isinstance(search_threads, bool) or not isinstance(search_threads, int)
                                           or search_threads < 1):  # fmt: skip
            raise ServingError(f"search_threads must be a positive integer, got {search_threads!r}.")
        self.search_threads = search_threads
        if text_batch_window is not None and not 0 <= text_batch_window <= 1:
            raise ServingError(f"text_batch_window is in seconds, from 0 to 1, got {text_batch_window!r}.")
        self.text_batch_window = text_batch_window
        self._batchers: dict[str, TextBatcher] = {}
        self.registry = ModelRegistry()
        for spec in models or []:
            self.registry.load(spec)
        if rule is not None:
            from ..galleries import mixed

            known = getattr(mixed, "RULES", None)
            if known is not None and rule not in known:
                raise ServingError(f"Unknown ranking rule {rule!r}: choose one of {list(known)}.")
        self._rule = rule  # None: the galleries' default rule, whatever it is
        self.rule = rule or default_rule()
        self._served: dict[str, ServedGallery] = {}
        self._targets: dict[str, str] = {}  # galleries' own names already located (not aliases)
        self._lock = threading.Lock()
        self._jobs_lock = threading.Lock()
        self.traffic = SearchTraffic()  # the searches a low-priority backfill yields to
        self.started = time.time()
        if resume_jobs:
            self.resume_jobs()

    # -- galleries -------------------------------------------------------------------------------------------------------

    def served(self, name: str) -> tuple[str | None, ServedGallery]:
        """``(alias, served gallery)`` for a request's gallery name (an alias, or a gallery of the root)."""
        # A folder's gallery directory named directly is located once (its manifest read), not on every search; an
        # alias is resolved on every request (a cutover switches it), and so is every name on Milvus.
        folder = isinstance(self.root, GalleryRoot)
        target = self._targets.get(name) if folder else None
        if target is None or name in self.root.table()["aliases"]:
            alias, target = self.root.locate(name)
            if alias is None and folder:
                self._targets[name] = target
        else:
            alias = None
        with self._lock:
            served = self._served.get(target)
            if served is None:
                served = ServedGallery(target, self.root.open_store(target))
                self._served[target] = served
                served.warming = _warm(served.store)
        return alias, served

    def default_gallery(self) -> str:
        names = list(self.root.aliases()) or self.root.galleries()
        if len(names) != 1:
            raise ServingError(f"Name the gallery: this service serves {names}.", 400)
        return names[0]

    # -- search ----------------------------------------------------------------------------------------------------------

    def _encoder_as_query(self, store) -> types.SimpleNamespace:
        """The gallery encoder's identity as a query config: a vector query without a model is one of its vectors."""
        encoder = store.encoder
        # every field an admission reads, absent ones as None (the admission cache reads them on each query)
        return types.SimpleNamespace(fingerprint=encoder["fingerprint"], embedding_dim=int(encoder["embedding_dim"]),
                                     compatible_with=encoder.get("compatible_with") or [], training=None, adapter=None,
                                     name_or_path=encoder.get("name_or_path"), _name_or_path=None)  # fmt: skip

    def _default_model(self, store, modality: str) -> LoadedModel:
        from ..compatibility import IncompatibleModelsError

        wanted = "text" if modality == "text" else "image"
        candidates = [m for m in self.registry.models.values() if m.modality == wanted]
        for candidate in candidates:
            try:
                store.admit(candidate.config)
                return candidate
            except IncompatibleModelsError:
                continue
        raise ServingError(f"No loaded {wanted} model is admitted to this gallery ({[m.name for m in candidates]}); "
                           "name one with 'model', or start the service with --model.", 409)  # fmt: skip

    def _batcher(self, loaded: LoadedModel) -> TextBatcher:
        with self._lock:
            if loaded.name not in self._batchers:
                self._batchers[loaded.name] = TextBatcher(loaded.model, window=self.text_batch_window)
            return self._batchers[loaded.name]

    def search(self, gallery: str | None = None, *, k: int = 10, text: str | None = None, image: bytes | None = None,
               vector: list | None = None, model: str | None = None) -> dict:  # fmt: skip
        """Search a gallery with one query (exactly one of ``text``, ``image`` (encoded bytes) or ``vector``)."""
        with self.traffic.search():  # counted in flight, embedding included: a low-priority backfill waits for it
            return self._search(gallery, k=k, text=text, image=image, vector=vector, model=model)

    def search_vectors(self, queries: list[dict]) -> list:
        """Many vector queries at once, each answered (or refused) as :meth:`search` answers it alone.

        The queries of one gallery, model, ``k`` and width are searched in one call of the gallery's search: the
        per-query work of a served search (resolving the gallery, admitting the model, the lock, the faiss call) is
        paid once for them. Answers equal the one-at-a-time ones up to float rounding.

        Args:
            queries (`list[dict]`): each with ``vector`` and optionally ``gallery``, ``k`` (default 10), ``model``.

        Returns:
            `list`: for each query, its answer (`dict`) or the exception that refuses it (the others are unaffected).
        """
        if len(queries) == 1:  # a lone query (what one client sends): its prepared search, where it has one
            answer = self._one_vector(queries[0])
            if answer is not None:
                return [answer]
        answers: list = [None] * len(queries)
        groups: dict[tuple, list[int]] = {}
        for position, query in enumerate(queries):
            key = (query.get("gallery"), query.get("model"), query.get("k", 10))
            groups.setdefault(key, []).append(position)
        with self.traffic.search():
            for (gallery, model, k), positions in groups.items():
                try:
                    name, alias, served, loaded = self._resolve(gallery, k, model)
                    config = loaded.config if loaded else self._encoder_as_query(served.store)
                    widths: dict[int, list[tuple[int, np.ndarray]]] = {}
                    for position in positions:
                        try:
                            vector = _vector(queries[position]["vector"], config)
                        except ServingError as refusal:
                            answers[position] = refusal
                            continue
                        widths.setdefault(vector.shape[1], []).append((position, vector))
                    for batch in widths.values():
                        admission = self._admit(served.store, config, name)
                        found = self._answers(name, alias, served, loaded, config, admission, k,
                                              np.concatenate([vector for _, vector in batch]))  # fmt: skip
                        for (position, _), answer in zip(batch, found):
                            answers[position] = answer
                except Exception as error:  # refuses (or fails) the whole group: they asked the same thing
                    for position in positions:
                        if answers[position] is None:
                            answers[position] = error
        return answers

    def _resolve(self, gallery: str | None, k, model: str | None):
        """``(name, alias, served gallery, loaded model or None)`` of a request, its ``k`` checked."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ServingError(f"k must be an integer from 1 to {MAX_K}, got {k!r}.", 422)
        name = gallery or self.default_gallery()
        alias, served = self.served(name)
        return name, alias, served, (self.registry.get(model) if model is not None else None)

    @staticmethod
    def _admit(store, config, name: str):
        from ..compatibility import IncompatibleModelsError

        try:
            return store.admit(config)
        except IncompatibleModelsError as refusal:
            raise ServingError(f"The query model is not admitted to {name}: {refusal}", 403) from None

    def _search(self, gallery: str | None, *, k: int, text: str | None, image: bytes | None, vector: list | None,
                model: str | None) -> dict:  # fmt: skip
        given = [name for name, value in (("text", text), ("image", image), ("vector", vector)) if value is not None]
        if len(given) != 1:
            raise ServingError(f"Give exactly one query: text, image or vector (got {given or 'none'}).", 422)
        name, alias, served, loaded = self._resolve(gallery, k, model)
        store = served.store
        if vector is not None:
            config = loaded.config if loaded else self._encoder_as_query(store)
            queries = _vector(vector, config)
        else:
            loaded = loaded or self._default_model(store, "text" if text is not None else "image")
            config = loaded.config
        admission = self._admit(store, config, name)
        if vector is None:
            if (text is not None) != (loaded.modality == "text"):
                raise ServingError(f"Model {loaded.name} embeds {loaded.modality}s; this query is "
                                   f"{'a text' if text is not None else 'an image'}.", 422)  # fmt: skip
            if text is not None and self.text_batch_window is not None:
                queries = self._batcher(loaded).encode(text)
            else:
                inputs = {"texts": [text]} if text is not None else {"images": [_decode_image(image)]}
                queries = loaded.model.encode(**inputs).numpy()
        return self._answers(name, alias, served, loaded, config, admission, k, queries)[0]

    def _one_vector(self, query: dict):
        """The answer to one vector query (or the exception that refuses it) by its prepared search; ``None`` where
        the general search must answer it (see :mod:`~bt2_hf.galleries.prepared`)."""
        k = query.get("k", 10)
        try:
            with self.traffic.search():
                name, alias, served, loaded = self._resolve(query.get("gallery"), k, query.get("model"))
                prepared = self._prepared(name, served, loaded)
                if prepared is None:
                    return None
                vector = _vector(query["vector"], prepared.query_config)
                return self._prepared_answer(name, alias, served, loaded, prepared, k, vector)
        except Exception as error:  # refused (or failed) as the general search would refuse it
            return error

    def _prepared(self, name: str, served: ServedGallery, loaded: LoadedModel | None):
        """The :class:`~bt2_hf.galleries.prepared.PreparedSearch` of a query model on a served gallery (``None`` where
        its queries need the general search), decided again when the gallery or its manifest has changed."""
        from ..compatibility import IncompatibleModelsError
        from ..galleries.prepared import prepare_search

        store = served.store
        kept = served.prepared.get(loaded.name if loaded else None)
        if kept is not None and kept[0] is store and kept[1] is store.manifest and (
                kept[2] is (loaded.config if loaded else kept[2])):  # fmt: skip
            return kept[3]
        manifest, config = store.manifest, loaded.config if loaded else self._encoder_as_query(store)
        try:
            prepared = prepare_search(store, config)
        except IncompatibleModelsError as refusal:  # never kept: decided again, and refused, on every query
            raise ServingError(f"The query model is not admitted to {name}: {refusal}", 403) from None
        served.prepared[loaded.name if loaded else None] = (store, manifest, config, prepared)
        return prepared

    def _prepared_answer(self, name, alias, served, loaded, prepared, k: int, queries: np.ndarray) -> dict | None:
        """The answer to one query by its prepared search; ``None`` when the gallery changed since it was prepared
        (the general search answers then)."""
        if self.search_threads is not None:
            _limit_faiss_threads(self.search_threads)
        with served.rw.read():
            store = served.store  # the gallery as of now: a dual-write may have replaced it before the lock
            if not prepared.current(store, prepared.query_config):
                return None
            hits = prepared.hits(queries, k)
            state = store.backfill_state
        return self._answer(name, alias, served, loaded, prepared.query_config, prepared.admission, store, state,
                            False, prepared.prefix, hits)  # fmt: skip

    def _answers(self, name, alias, served, loaded, config, admission, k: int, queries: np.ndarray) -> list[dict]:
        """One answer per query row, all searched in one call under the gallery's read lock."""
        if self.search_threads is not None:
            _limit_faiss_threads(self.search_threads)
        with served.rw.read():
            store = served.store  # the gallery as of now: a dual-write may have replaced it before the lock
            result = store.search(queries, k=k, query_config=config, **({"rule": self._rule} if self._rule else {}))
            state = store.backfill_state
        return [self._answer(name, alias, served, loaded, config, admission, store, state,
                             bool(result.backfilled[row].any()), int(result.prefix_dim), hits)
                for row, hits in enumerate(result.hits())]  # fmt: skip

    def _answer(self, name, alias, served, loaded, config, admission, store, state, mixed: bool, prefix: int,
                hits: list[dict]) -> dict:  # fmt: skip
        return {
            "gallery": name, "alias": alias, "directory": served.name,
            "model": {"name": loaded.name if loaded else "gallery encoder", "fingerprint": config.fingerprint},
            "encoder": store.encoder["fingerprint"],
            # the rule that ranks during a backfill; ``mixed``: re-embedded items hold slots of this answer
            "rule": self.rule, "mixed": mixed, "prefix_dim": prefix, "admission": admission.basis,
            "backfill": None if not state else {"done": int(state["done"]), "count": len(store)}, "hits": hits,
        }  # fmt: skip

    # -- dual-write ------------------------------------------------------------------------------------------------------

    def _item_vector(self, item: dict, fingerprint: str, name: str | None) -> np.ndarray:
        """One item's vector of the model ``fingerprint``: given in the request, or embedded by a loaded model."""
        given = item.get("vectors") or {}
        for key, value in given.items():
            loaded = self.registry.models.get(key)
            if key == fingerprint or (loaded and loaded.fingerprint == fingerprint) or (
                    len(key) >= 12 and fingerprint.startswith(key)):  # fmt: skip
                return np.asarray(value, dtype=np.float32)
        loaded = self.registry.by_fingerprint(fingerprint)
        if loaded is None:
            raise ServingError(f"Item {item['id']!r} needs a vector of model {name} ({fingerprint[:12]}), which this "
                               "service has not loaded: give it under 'vectors', or start with --model.", 409)  # fmt: skip
        if item.get("text") is not None:
            if loaded.modality != "text":
                raise ServingError(f"Model {loaded.name} embeds images; item {item['id']!r} is a text.", 422)
            return loaded.model.encode(texts=[item["text"]]).numpy()[0]
        if item.get("image") is not None:
            if loaded.modality == "text":
                raise ServingError(f"Model {loaded.name} embeds texts; item {item['id']!r} is an image.", 422)
            return loaded.model.encode(images=[_decode_image(item["image"])]).numpy()[0]
        raise ServingError(f"Item {item['id']!r} has no text, image or vector of model {name}.", 422)

    def add_items(self, gallery: str | None, items: list[dict]) -> dict:
        """Dual-write: add items to the served gallery and to its standby, each with every vector it keeps.

        A gallery keeps its encoder's vector for every item and, during a backfill, the backfill model's: an added
        item gets both, so queries of the old and of the new model find it, and it counts as re-embedded. The
        alias's standby (the rollback target) gets the item too, so a rollback loses nothing. Each gallery's
        append-only files take the items and its manifest commits them (a crash leaves all of a write or none),
        then the open gallery takes them under its write lock: a write costs what it adds, not the gallery's size.
        Ids already present are skipped, so a retried write adds nothing twice.
        """
        from ..galleries.append import StaleGalleryError, append_items

        if not items:
            raise ServingError("No items given.", 422)
        if self._jobs_file is None:
            raise ServingError("Items are added to faiss galleries only: a Milvus gallery takes new items through "
                               "Milvus's own client.", 501)  # fmt: skip
        name = gallery or self.default_gallery()
        alias, served = self.served(name)
        targets = [served]
        standby = self.root.standby(alias) if alias else None
        if standby is not None:
            # the standby first: the served gallery is the last word
            targets.insert(0, self.served(Path(standby).name)[1])
        written = {}
        embedded: dict[str, np.ndarray] = {}  # by model fingerprint: each model embeds the items once

        def vectors_of(model: dict) -> np.ndarray:
            if model["fingerprint"] not in embedded:
                embedded[model["fingerprint"]] = np.stack(
                    [self._item_vector(item, model["fingerprint"], model.get("name_or_path")) for item in items]
                )
            return embedded[model["fingerprint"]]

        for target in targets:
            with target.mutation:  # read the gallery's state and write it with no backfill batch in between
                for attempt in (1, 2):
                    store = target.store
                    state = store.backfill_state
                    try:
                        _, added = append_items(
                            store, vectors_of(store.encoder), [item["id"] for item in items],
                            backfill_vectors=vectors_of(state["model"]) if state else None,
                            labels=[item.get("label") for item in items], paths=[item.get("path") for item in items],
                            swap=target.rw.write,
                        )  # fmt: skip
                        break
                    except StaleGalleryError:
                        if attempt == 2:
                            raise
                        # compacted (`bt2 gallery compact`) or written by another process: its files are the truth
                        reopened = self.root.open_store(target.name)
                        with target.rw.write():
                            target.store = reopened
            written[target.name] = {"added": added, "count": len(store)}
        return {"gallery": name, "written": written}

    # -- backfill jobs ---------------------------------------------------------------------------------------------------

    def _jobs(self) -> dict:
        from ..utils.readers import read_json

        path = self._jobs_file
        return read_json(path, "backfill job record") if path is not None and path.exists() else {}

    def start_backfill(self, gallery: str | None, model: str, data: str, *, split: str | None = None,
                       column: str | None = None, id_column: str | None = None, order: str | None = None,
                       seed: int | None = None, batch_size: int = 1024, allow_unmeasured: bool = False,
                       pause: float = 0.0, priority: str = "low", share: float | None = None) -> dict:  # fmt: skip
        """Start (or resume) a backfill of a gallery with a loaded model, beside the searches; its progress.

        ``priority`` is ``"low"`` (the job yields to the searches: it waits for quiet traffic before each step, and
        takes at most ``share`` of the time under continuous load, default 0.2; see
        :mod:`bt2_hf.serving.priority`) or ``"normal"`` (flat out); ``pause`` adds seconds between batches in
        either case.
        """
        name = gallery or self.default_gallery()
        _, served = self.served(name)
        loaded = self.registry.get(model)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ServingError(f"batch_size must be a positive integer, got {batch_size!r}.", 422)
        try:
            BackfillPriority.named(priority, share)
        except ValueError as error:
            raise ServingError(str(error), 422) from None
        spec = {"model": loaded.path, "data": str(data), "split": split, "column": column, "id_column": id_column,
                "order": order, "seed": seed, "batch_size": int(batch_size), "allow_unmeasured": allow_unmeasured,
                "pause": float(pause), "priority": priority, "share": None if share is None else float(share)}  # fmt: skip
        self.start_job(served, loaded, spec)
        return self.progress(served)

    def start_job(self, served: ServedGallery, loaded: LoadedModel, spec: dict, job_class=None) -> None:
        """Start a backfill job (a :class:`BackfillJob`, or ``job_class``, e.g. one that embeds rows another way)
        on a served gallery, after the same admission as a search, and record it for restarts."""
        from ..compatibility import IncompatibleModelsError

        with self._jobs_lock:
            if served.job is not None and served.job.status in ("starting", "running"):
                raise ServingError(f"A backfill of {served.name} is already running.", 409)
            state = served.store.backfill_state
            if state and not _same(state["model"]["fingerprint"], loaded.config):
                raise ServingError(f"{served.name} is being backfilled with another model "
                                   f"({state['model'].get('name_or_path')}); continue that one.", 409)  # fmt: skip
            try:
                served.store.admit(loaded.config, allow_unmeasured=bool(spec.get("allow_unmeasured")))
            except IncompatibleModelsError as refusal:
                raise ServingError(f"{loaded.name} may not backfill {served.name}: {refusal}", 403) from None
            job = (job_class or BackfillJob)(self, served, loaded, spec)
            job.start()
            served.job = job
            if self._jobs_file is not None:
                jobs = self._jobs()
                jobs[served.name] = spec
                self._jobs_file.parent.mkdir(exist_ok=True)
                atomic_write_json(self._jobs_file, jobs)

    def forget_job(self, name: str) -> None:
        with self._jobs_lock:
            jobs = self._jobs()
            if jobs.pop(name, None) is not None:
                atomic_write_json(self._jobs_file, jobs)

    def resume_jobs(self) -> list[str]:
        """Restart the backfill jobs recorded in the root (after a restart or a crash); the names resumed."""
        resumed = []
        for name, spec in self._jobs().items():
            try:
                _, served = self.served(name)
                loaded = self.registry.load(spec["model"])
                self.start_job(served, loaded, spec)
                resumed.append(name)
                logger.info(
                    "Resumed the backfill of %s at %s items.", name, (served.store.backfill_state or {}).get("done", 0)
                )
            except Exception as error:  # a job that cannot resume is reported, never fatal to serving
                logger.error("Cannot resume the backfill of %s: %s", name, error)
        return resumed

    def backfilling(self) -> bool:
        """Whether a backfill job of this service is starting or running now."""
        return any(served.job is not None and served.job.status in ("starting", "running")
                   for served in list(self._served.values()))  # fmt: skip

    def stop_jobs(self, timeout: float | None = 5.0) -> None:
        """Stop the backfill jobs (each at its next committed batch) and the text batchers."""
        for served in list(self._served.values()):
            if served.job is not None:
                served.job.stop(timeout)
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.stop()

    def progress(self, served: ServedGallery) -> dict | None:
        state = served.store.backfill_state
        if served.job is not None:
            return served.job.progress()
        if not state:
            return None
        return {"status": "complete" if state["done"] >= len(served.store) else "paused",
                "model": state["model"].get("name_or_path"), "fingerprint": state["model"]["fingerprint"],
                "done": int(state["done"]), "count": len(served.store), "error": None, "items_per_second": None}  # fmt: skip

    # -- cutover and rollback --------------------------------------------------------------------------------------------

    def cutover(self, alias: str, to: str | None = None) -> dict:
        _, served = self.served(alias)
        if served.job is not None and served.job.status in ("starting", "running"):
            raise ServingError(f"The backfill of {served.name} is still running: cut over when it is "
                               "complete.", 409)  # fmt: skip
        with served.mutation:  # no dual-write rewrites the gallery while it is finalised
            return self.root.cutover(alias, to=to, by="api")

    def rollback(self, alias: str) -> dict:
        return self.root.rollback(alias, by="api")

    # -- descriptions ----------------------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """Every alias and gallery of the root: encoder, size, admitted models, backfill progress, history."""
        from ..compatibility import IncompatibleModelsError

        galleries = []
        for name in self.root.galleries():
            _, served = self.served(name)
            store = served.store
            admitted = {}
            for loaded in self.registry.models.values():
                try:
                    admission = store.admit(loaded.config)
                    admitted[loaded.name] = {"admitted": True, "basis": admission.basis,
                                             "prefix_dim": admission.prefix_dim, "evidence": admission.evidence}  # fmt: skip
                except IncompatibleModelsError as refusal:
                    admitted[loaded.name] = {"admitted": False, "reason": str(refusal).splitlines()[0]}
            galleries.append({
                "name": name, "encoder": {key: store.encoder.get(key) for key in ("name_or_path", "fingerprint",
                                                                                  "embedding_dim")},
                "count": len(store), "dimension": store.dimension, "index": store.manifest["index"]["type"],
                "policy": store.manifest.get("policy"),
                "gate": [{key: entry.get(key) for key in ("query_name", "query_fingerprint", "passed", "margin",
                                                          "size", "date")} for entry in store.admissions],
                "models": admitted, "backfill": self.progress(served),
            })  # fmt: skip
        return {"aliases": self.root.aliases(), "galleries": galleries, "rule": self.rule,
                "models": [{"name": m.name, "fingerprint": m.fingerprint, "modality": m.modality,
                            "embedding_dim": int(m.config.embedding_dim)} for m in self.registry.models.values()],
                "history": self.root.history()}  # fmt: skip

    def gauges(self) -> list[tuple[str, str, dict, float]]:
        gauges = [("bt2_uptime_seconds", "Seconds since the service started.", {}, time.time() - self.started)]
        for served in list(self._served.values()):
            labels = {"gallery": served.name}
            gauges.append(("bt2_gallery_items", "Items in the gallery.", labels, len(served.store)))
            progress = self.progress(served)
            if progress:
                gauges.append(
                    ("bt2_backfill_done_items", "Items re-embedded by the backfill.", labels, progress["done"])
                )
                gauges.append(("bt2_backfill_fraction", "Backfilled fraction of the gallery.", labels,
                               progress["done"] / max(1, progress["count"])))  # fmt: skip
                gauges.append(("bt2_backfill_running", "1 while a backfill job runs.", labels,
                               float(progress["status"] == "running")))  # fmt: skip
                if progress.get("items_per_second") is not None:
                    gauges.append(("bt2_backfill_items_per_second", "Items re-embedded per second since the job "
                                   "started (its rate beside the searches).", labels, progress["items_per_second"]))  # fmt: skip
                if progress.get("yielded_seconds") is not None:
                    gauges.append(("bt2_backfill_yielded_seconds", "Seconds the backfill job waited for quiet "
                                   "search traffic.", labels, progress["yielded_seconds"]))  # fmt: skip
        return gauges


_THIS_THREAD = threading.local()


def _warm(store) -> threading.Thread | None:
    """Build a just opened gallery's search over its re-embedded rows in the background (see
    ``FaissGallery.warm_backfill_search``): new-model queries that arrive meanwhile wait for that one build."""
    if not getattr(store, "backfill_state", None) or not hasattr(store, "warm_backfill_search"):
        return None

    def warm() -> None:
        try:
            store.warm_backfill_search()
        except Exception:  # the first new-model query builds it again and says why it fails
            logger.exception("Building the search over the re-embedded rows of %s failed", store.location)

    thread = threading.Thread(target=warm, name="warm-backfill-search", daemon=True)
    thread.start()
    return thread


def _limit_faiss_threads(count: int) -> None:
    """Set faiss's OpenMP threads for the calling thread (OpenMP keeps the setting per thread: the event loop and
    each worker thread set it once)."""
    if getattr(_THIS_THREAD, "faiss_threads", None) != count:
        from ..retrieval.knn import import_faiss

        import_faiss().omp_set_num_threads(count)
        _THIS_THREAD.faiss_threads = count


def _same(fingerprint: str, config) -> bool:
    from ..compatibility import same_fingerprint

    return bool(same_fingerprint(fingerprint, getattr(config, "fingerprint", None)))


def _vector(vector, config) -> np.ndarray:
    try:
        queries = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise ServingError("'vector' must be a list of numbers.", 422) from None
    if queries.ndim != 1 or not len(queries):
        raise ServingError(f"'vector' must be one flat list of numbers, got shape {queries.shape}.", 422)
    # one dot product in float64 checks both: it is finite and positive exactly when every number is finite and one
    # is not zero (no float32 value squared and summed overflows float64)
    squared_norm = float(np.dot(queries, queries.astype(np.float64)))
    if not 0.0 < squared_norm < math.inf:
        raise ServingError("'vector' must be finite and non-zero.", 422)
    width, prefix = int(config.embedding_dim), int(getattr(config, "compatible_dim", None) or config.embedding_dim)
    if len(queries) not in (width, prefix):
        raise ServingError(f"'vector' has {len(queries)} numbers; the query model "
                           f"{getattr(config, 'name_or_path', None) or config.fingerprint[:12]} embeds {width}.", 422)  # fmt: skip
    return queries[None, :]


def _decode_image(data: bytes):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before any pixel
        if image.width * image.height > MAX_PIXELS:
            raise ServingError(f"The image is {image.width} × {image.height} pixels, over the service's limit of "
                               f"{MAX_PIXELS:,}: send a smaller one.", 413)  # fmt: skip
        image.load()
    except ServingError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ServingError(f"The image could not be read ({type(error).__name__}): send a PNG, JPEG or WebP.",
                           415 if isinstance(error, UnidentifiedImageError) else 400) from None  # fmt: skip
    return image.convert("RGB")
