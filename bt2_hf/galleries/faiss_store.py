"""A gallery on disk with faiss: flat, IVF-Flat, IVF-PQ (with exact re-ranking) or HNSW, with its manifest.

Layout of a gallery directory (built in a temporary sibling and moved into place, so a reader sees all of it or
none of it)::

    manifest.json    encoder identity, dimension, count, index type and parameters, dataset, sha256 of the files,
                     and, during a backfill, which model embeds which items and how far it got
    ids.npy          the item ids, by row
    vectors.npy      the gallery encoder's unit vectors (fp16/fp32), memory-mapped: exact re-ranking of the IVF-PQ
                     candidates, priority orders and rebuilds read them from disk, never all into RAM
    index.faiss      the faiss index over vectors.npy
    labels.npy       optional: each item's class id (int64, -1 when unknown); names in the manifest's ``items``
    paths.npy        optional: each item's file path or dataset row (unicode)
    probe/           optional: the gallery's probe set for its gate (``bt2 gallery admit``): embeddings.npy (the
                     encoder's vectors of held-out items), labels.npy and items.npy (uint8 images) or texts.json
    backfill/        during a backfill: order.npy (the re-embedding order) and vectors.npy (the new model's rows)
    appended/        optional: items added after the build (dual-write), append-only: vectors.bin (the encoder's
                     rows), backfill.bin (the backfill model's rows of items added during a backfill), items.jsonl
                     (ids, labels, paths); the manifest's ``appended`` commits their lengths, and its ``count`` is
                     the base files' rows plus these (``format`` 2 while there are any). Opening adds them to the
                     loaded index; ``bt2 gallery compact`` folds them into the files above (see ``appended.py``)

The manifest also holds the owner's admission policy (``policy``) and the gallery's own admission log
(``admissions``: what ``bt2 gallery admit`` measured), both read by every search. Every data file, optional ones
included, is listed in ``files`` with its sha256 and in ``file_sizes``; the appended files, which grow, are listed in
``appended`` with their committed lengths and digests instead.

IVF-PQ is trained on a sample (``train_size`` rows) and filled chunk by chunk from the memory map, so building it
needs memory for the codes plus one chunk, never for the whole gallery.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BT2InputError
from ..retrieval.knn import import_faiss
from ..retrieval.protocol import l2_normalize
from ..utils.io import atomic_directory, atomic_write_json
from ..utils.npy_rows import npy_layout, write_npy_rows
from .appended import AppendedRows, read_appended
from .backfill_search import BackfillSearch
from .shards import file_sha256, ids_array

logger = logging.getLogger(__name__)

GALLERY_KIND = "bt2-gallery"
GALLERY_FORMAT = 1
APPENDED_FORMAT = 2  # a gallery with appended rows: a bt2_hf that reads only format 1 would miss them
MANIFEST_NAME = "manifest.json"
DATA_FILES = ("index.faiss", "ids.npy", "vectors.npy")
PROBE_DIR = "probe"
# manifest key → the type it must have (read_manifest refuses a manifest without them, naming the key)
_MANIFEST_KEYS = {"encoder": dict, "dimension": int, "count": int, "dtype": str, "index": dict, "files": dict}
INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw")
CHUNK = 65_536


class GalleryError(BT2InputError):
    """A gallery is missing, corrupted, inconsistent with its manifest, or asked to do something it cannot."""


class LegacyGalleryFormatError(GalleryError):
    """A gallery in the former ``GalleryIndex`` format; ``bt2 gallery upgrade DIR`` converts it once, in place."""


def default_index_params(index_type: str, count: int, dimension: int, **overrides) -> dict:
    """Index parameters for a gallery of ``count`` × ``dimension`` vectors (overrides win).

    - ``ivf`` / ``ivfpq``: ``nlist = √N`` lists, ``nprobe`` 16 at search time, k-means (10 iterations) on a sample
      of ``train_size = 50·nlist`` rows (at least 10,000); ``ivfpq`` adds ``pq_m`` sub-quantizers of 8 bits
      (``dimension / 8`` bytes per vector: 1/32 of float32; codebooks trained on 10,240 of the sampled rows) and
      ``rerank`` 1,000 candidates re-scored exactly from the vectors on disk. The codes only have to put the true
      neighbours among the candidates; the exact re-ranking orders them. On 1M × 128 vectors in 1,000 Gaussian
      clusters (``benchmarks/gallery_scale.py``) recall@10 against flat search was 0.55 / 0.77 / 0.999 with 200 /
      400 / 1,000 candidates; 32-byte codes needed 400 candidates for 0.95 at about the same time per query.
    - ``hnsw``: ``M`` 32, ``ef_construction`` 80, ``ef_search`` 64.
    """
    if index_type not in INDEX_TYPES:
        raise GalleryError(f"Unknown index type {index_type!r}; choose one of {INDEX_TYPES}.")
    params: dict[str, Any] = {}
    if index_type in ("ivf", "ivfpq"):
        nlist = max(1, min(int(math.sqrt(count)), count // 39))
        params = {"nlist": nlist, "nprobe": 16, "train_size": min(count, max(50 * nlist, 10_000)), "seed": 0}
        if index_type == "ivfpq":
            pq_m = next(
                m for m in (dimension // 8, dimension // 4, dimension // 2, dimension) if m and dimension % m == 0
            )
            params.update(pq_m=pq_m, pq_bits=8, rerank=1000)
    elif index_type == "hnsw":
        params = {"M": 32, "ef_construction": 80, "ef_search": 64}
    unknown = set(overrides) - set(params) - {"rerank"}
    if unknown:
        raise GalleryError(
            f"Parameters {sorted(unknown)} do not apply to a {index_type} index (it takes {sorted(params)})."
        )
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def build_faiss_index(vectors: np.ndarray, index_type: str, params: dict):
    """Build a faiss inner-product index over (memory-mapped) unit vectors, training on a sample and adding by chunks."""
    faiss = import_faiss()
    count, dimension = vectors.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(dimension)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        quantizer = faiss.IndexFlatIP(dimension)
        if index_type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dimension, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        else:
            if count < 2 ** params["pq_bits"] * 39 // 4:
                raise GalleryError(
                    f"IVF-PQ needs a few thousand vectors to train its codebooks ({count} given): use 'ivf' or 'flat'."
                )
            index = faiss.IndexIVFPQ(
                quantizer, dimension, params["nlist"], params["pq_m"], params["pq_bits"], faiss.METRIC_INNER_PRODUCT
            )
            # Codebooks of sub-vectors converge on a few thousand points; faiss's defaults (25 iterations on up to
            # 256 points per centroid) made training dominate the build. Exact re-ranking absorbs the difference.
            index.pq.cp.niter = 10
            index.pq.cp.max_points_per_centroid = 40
        index.cp.niter = 10  # the lists need a good partition, not a converged one: build time matters more
        index.own_fields = True
        index.quantizer = quantizer
        quantizer.this.disown()
        rng = np.random.default_rng(params.get("seed", 0))
        sample = np.sort(rng.choice(count, size=min(count, params["train_size"]), replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    for start in range(0, count, CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + CHUNK], dtype=np.float32))
    return index


# faiss search parameters by (index type, value): built once, passed with each search rather than set on the shared
# index, so concurrent searches with different settings never see each other's (and no setter runs per search)
_SEARCH_PARAMETERS: dict[tuple[str, int], Any] = {}


def _search_parameters(index_type: str, params: dict):
    """The faiss ``SearchParameters`` of one search (``None`` for a flat index)."""
    if index_type in ("ivf", "ivfpq"):
        key = (index_type, int(params["nprobe"]))
    elif index_type == "hnsw":
        key = (index_type, int(params["ef_search"]))
    else:
        return None
    found = _SEARCH_PARAMETERS.get(key)
    if found is None:
        faiss = import_faiss()
        if index_type == "hnsw":
            found = faiss.SearchParametersHNSW(efSearch=key[1])
        else:
            found = faiss.SearchParametersIVF(nprobe=key[1])
        _SEARCH_PARAMETERS[key] = found
    return found


class ManifestAccessors:
    """What every gallery store reads from its manifest: size, width, encoder and backfill state."""

    manifest: dict

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def encoder(self) -> dict:
        return self.manifest["encoder"]

    @property
    def backfill_state(self) -> dict | None:
        return self.manifest.get("backfill")

    @property
    def policy(self):
        """The owner's :class:`~bt2_hf.compatibility.AdmissionPolicy` (the manifest's ``policy``; default if none)."""
        from ..compatibility import AdmissionPolicy

        try:
            return AdmissionPolicy.from_dict(self.manifest.get("policy"))
        except ValueError as error:
            raise GalleryError(f"the manifest's admission policy is invalid ({error}); fix it with "
                               "`bt2 gallery policy`.") from None  # fmt: skip

    @property
    def admissions(self) -> list[dict]:
        """The gallery's own admission log: one entry per ``bt2 gallery admit``, oldest first."""
        return list(self.manifest.get("admissions") or [])

    @property
    def location(self) -> str:
        return str(getattr(self, "directory", None) or getattr(self, "uri", ""))

    @property
    def label_names(self) -> list[str] | None:
        return (self.manifest.get("items") or {}).get("label_names")

    def labels_of(self, rows) -> list | None:
        """Class names (or ids when the gallery has no names) of ``rows``; ``None`` when it stores no labels."""
        return None

    def paths_of(self, rows) -> list | None:
        """File paths or dataset rows of ``rows``; ``None`` when the gallery stores none."""
        return None

    def append_admission(self, entry: dict) -> None:
        """Append one measurement to the gallery's admission log (the manifest, rewritten atomically)."""
        self._write_manifest(dict(self.manifest, admissions=self.admissions + [dict(entry)]))

    def set_policy(self, policy) -> None:
        """Store the owner's admission policy in the manifest (atomically)."""
        self._write_manifest(dict(self.manifest, policy=_policy_dict(policy)))

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.asarray(rows)], dtype=np.float32)

    def rerank_vectors(self):
        """What IVF-PQ's exact re-ranking reads the candidates' vectors from (indexed by gallery row)."""
        return self.vectors

    def iter_vectors(self, chunk: int = CHUNK):
        """``(rows, vectors)`` of the encoder's vectors, a chunk at a time."""
        for start in range(0, len(self), chunk):
            stop = min(len(self), start + chunk)
            yield np.arange(start, stop), np.asarray(self.vectors[start:stop], dtype=np.float32)

    def search_encoder_space(self, queries: np.ndarray, depth: int, **search_params) -> tuple[np.ndarray, np.ndarray]:
        """Top ``depth`` rows by cosine in the encoder's space, best first (IVF-PQ candidates re-scored exactly).

        Args:
            queries (`np.ndarray` of shape `(n, d)`): unit query vectors in the encoder's space (prefix applied).
            depth (`int`): how many rows to return.
            search_params: ``nprobe``, ``ef_search`` or ``rerank`` for this search (defaults: the manifest's).
        """
        index_type = self.manifest["index"]["type"]
        params = self.manifest["index"]["params"]
        if search_params:
            params = dict(params, **{k: v for k, v in search_params.items() if v is not None})
        parameters = _search_parameters(index_type, params)
        depth = min(depth, len(self))
        if index_type != "ivfpq":
            scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), depth, params=parameters)
            return _sort(scores, rows)
        candidates = min(len(self), max(depth, int(params.get("rerank") or depth)))
        if len(queries) == 1:  # a served query: one search, one re-ranking, no blocks to join
            block = np.ascontiguousarray(queries, dtype=np.float32)
            _, rows = self.index.search(block, candidates, params=parameters)
            return rerank_rows(self.rerank_vectors(), block, rows, depth)[0]
        parts = []
        # Queries per block: the candidate vectors read for re-ranking stay within about 64 MiB (page faults on big
        # temporary arrays, not the arithmetic, dominated re-ranking with 1,024 queries at a time).
        step = max(1, min(1024, (64 << 20) // (candidates * self.dimension * 4)))
        for start in range(0, len(queries), step):
            block = np.ascontiguousarray(queries[start : start + step], dtype=np.float32)
            _, rows = self.index.search(block, candidates, params=parameters)
            parts.extend(self.rerank(block, rows, depth))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def rerank(self, queries: np.ndarray, rows: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """IVF-PQ's exact re-ranking of one block of queries' candidate ``rows``: ``[(scores, rows)]`` parts, each
        the top ``depth`` of its queries, best first."""
        return rerank_rows(self.rerank_vectors(), queries, rows, depth)

    def admit(self, query_config, allow_unmeasured: bool = False):
        """The :class:`~bt2_hf.compatibility.Admission` of a query model to this gallery, with its policy and log.

        A served gallery admits the same few query models on every search, so an admission is kept while the
        manifest (encoder, policy, admission log) is the one it was decided on and the query config's fields that
        decide it are equal to what they were; a refusal is never kept (it is decided again, and raised, each time).
        """
        from ..compatibility import admit_to_gallery

        key = (getattr(query_config, "fingerprint", None), bool(allow_unmeasured))
        decided_by = _admission_fields(query_config)
        kept = self.__dict__.setdefault("_admitted", {}).get(key)
        if kept is not None and kept[0] is self.manifest and kept[1] == decided_by:
            return kept[2]
        admission = admit_to_gallery(query_config, self.encoder, self.dimension, allow_unmeasured=allow_unmeasured,
                                     policy=self.policy, admissions=self.admissions,
                                     gallery_location=self.location)  # fmt: skip
        if len(self._admitted) >= 64:  # a service sees a few models; anything else is not worth keeping
            self._admitted.clear()
        # deep copies: a config whose compatible_with list is extended in place must not match its former self
        self._admitted[key] = (self.manifest, copy.deepcopy(decided_by), admission)
        return admission


class FaissGallery(ManifestAccessors):
    """A gallery directory: vectors of one encoder, a faiss index over them, ids, manifest, and a backfill state.

    Build with :meth:`build` (from an embedding directory or arrays), open with :meth:`open`, search with
    :func:`bt2_hf.galleries.search_gallery` (or :meth:`search`), backfill with :func:`bt2_hf.galleries.backfill`.
    """

    def __init__(self, directory: str | os.PathLike, manifest: dict, index, vectors: np.ndarray, ids: np.ndarray,
                 appended: AppendedRows | None = None):  # fmt: skip
        self.directory = Path(directory)
        self.manifest = manifest
        self.index = index  # over every row: the base file's, then the appended rows (added when opened)
        self.vectors = vectors  # the base rows (vectors.npy); rows of every kind: vectors_at, iter_vectors
        self._ids = ids  # the base rows' ids
        # rows added after the build (appended.py), or None; replaced only under the caller's write lock
        self.appended = appended
        self._sorted_ids = None  # the base ids sorted, once a write asks whether ids are present
        self._backfill_table = None  # backfill/order.npy, the order of the rows the backfill table holds
        self._backfill_inserts: list[tuple[int, np.ndarray]] = []  # appended rows placed in the backfill order
        self._backfill_vectors = None
        self._backfill_order = None
        self._backfill_search = None  # the search over the re-embedded rows (a BackfillSearch)
        self._backfill_search_built = threading.Lock()  # one search at a time builds it when it is missing
        self._backfill_rank = None  # each row's place in the backfill order
        self._labels = self._paths = None

    # -- building and opening -----------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        directory: str | os.PathLike,
        vectors,
        ids: list | np.ndarray | None = None,
        *,
        encoder: dict,
        index_type: str = "flat",
        dataset: dict | None = None,
        dtype: str = "float32",
        overwrite: bool = False,
        labels=None,
        label_names: list[str] | None = None,
        paths: list | None = None,
        probe: dict | None = None,
        policy=None,
        admissions: list[dict] | None = None,
        **index_params,
    ) -> FaissGallery:
        """Write a gallery directory atomically and open it.

        Args:
            directory (`str` or `os.PathLike`): where the gallery goes.
            vectors (`np.ndarray` of shape `(N, d)`, or an iterable of `(vectors, ids)` chunks): the encoder's
                embeddings (re-normalised here); chunks (e.g. ``EmbeddingDirectory.shards()``) are copied to disk one
                at a time, so a gallery larger than RAM can be built.
            ids (`list` or `np.ndarray`, *optional*): one id per row (with an array); defaults to ``0..N-1``.
            encoder (`dict`): the encoder's identity (:func:`bt2_hf.galleries.model_identity`): ``fingerprint``,
                ``name_or_path``, ``embedding_dim``.
            index_type (`str`, *optional*, defaults to `"flat"`): ``"flat"``, ``"ivf"``, ``"ivfpq"`` or ``"hnsw"``.
            dataset (`dict`, *optional*): the dataset's description (name, hash) from the embedding manifest.
            dtype (`str`, *optional*, defaults to `"float32"`): of ``vectors.npy`` (``"float16"`` halves the disk).
            overwrite (`bool`, *optional*, defaults to `False`): replace an existing gallery at ``directory``.
            labels (`np.ndarray` of int, *optional*): each item's class id (-1: unknown), shown in search results.
            label_names (`list[str]`, *optional*): the class names, by id.
            paths (`list[str]`, *optional*): each item's file path or dataset row, shown in search results.
            probe (`dict`, *optional*): the gallery's probe set for its gate (:func:`bt2_hf.galleries.gate.make_probe`):
                ``embeddings`` (this encoder's vectors of held-out items), ``labels`` and ``images`` (uint8) or
                ``texts``, plus ``description``.
            policy (:class:`~bt2_hf.compatibility.AdmissionPolicy` or `dict`, *optional*): the owner's admission
                policy, stored in the manifest (default: top-1 and mAP must beat old→old, any size).
            admissions (`list[dict]`, *optional*): an admission log to carry over (a rebuild of the same encoder).
            index_params: see :func:`default_index_params` (``nlist``, ``nprobe``, ``pq_m``, ``rerank``, ``M`` …).
        """
        if not encoder.get("fingerprint"):
            raise GalleryError(
                "The encoder has no fingerprint: save it with save_pretrained before building a gallery."
            )
        chunks = [(vectors, ids)] if isinstance(vectors, np.ndarray) or hasattr(vectors, "shape") else vectors
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            all_ids, count, dimension, memmap = [], 0, None, None
            chunk_list = list(chunks) if isinstance(chunks, list) else chunks
            # Two passes over lazy chunks would re-read them: collect shapes from memory-mapped arrays when possible.
            staged = []
            for chunk_vectors, chunk_ids in chunk_list:
                chunk_vectors = (
                    np.asarray(chunk_vectors) if not isinstance(chunk_vectors, np.memmap) else chunk_vectors
                )
                if getattr(chunk_vectors, "ndim", 0) != 2:
                    raise GalleryError(f"Gallery vectors must be 2-d (N, d), got shape {np.shape(chunk_vectors)}.")
                dimension = dimension or chunk_vectors.shape[1]
                if chunk_vectors.shape[1] != dimension:
                    raise GalleryError(f"Chunks of {chunk_vectors.shape[1]} and {dimension} dims: one encoder only.")
                chunk_ids = range(count, count + len(chunk_vectors)) if chunk_ids is None else chunk_ids
                if len(chunk_ids) != len(chunk_vectors):
                    raise GalleryError(f"{len(chunk_ids)} ids for {len(chunk_vectors)} vectors: give one id per row.")
                staged.append(chunk_vectors)
                all_ids.extend(np.asarray(chunk_ids).tolist())
                count += len(chunk_vectors)
            if count == 0:
                raise GalleryError("No vectors to build a gallery from.")
            if encoder.get("embedding_dim") not in (None, dimension):
                raise GalleryError(
                    f"The encoder embeds {encoder['embedding_dim']}-d vectors but {dimension}-d were given: give the "
                    "vectors of that encoder."
                )
            id_array = ids_array(all_ids)
            if len(np.unique(id_array)) != count:
                raise GalleryError("Gallery ids must be unique.")
            memmap = np.lib.format.open_memmap(
                tmp / "vectors.npy", mode="w+", dtype=np.dtype(dtype), shape=(count, dimension)
            )
            row = 0
            for chunk_vectors in staged:
                for start in range(0, len(chunk_vectors), CHUNK):
                    block = l2_normalize(chunk_vectors[start : start + CHUNK])
                    memmap[row : row + len(block)] = block
                    row += len(block)
            memmap.flush()
            params = default_index_params(index_type, count, dimension, **index_params)
            index = build_faiss_index(memmap, index_type, params)
            del memmap
            faiss = import_faiss()
            faiss.write_index(index, str(tmp / "index.faiss"))
            np.save(tmp / "ids.npy", id_array, allow_pickle=False)
            data_files = list(DATA_FILES)
            items = _write_item_files(tmp, count, labels, label_names, paths)
            data_files += [name for name in (items.get("labels"), items.get("paths")) if name]
            probe_record = None
            if probe is not None:
                probe_record, probe_files = _write_probe(tmp, probe, dimension, encoder)
                data_files += probe_files
            manifest = {
                "kind": GALLERY_KIND,
                "format": GALLERY_FORMAT,
                "store": "faiss",
                "encoder": dict(encoder),
                "dimension": int(dimension),
                "count": int(count),
                "dtype": dtype,
                "similarity": "cosine",
                "index": {"type": index_type, "params": params},
                "dataset": dataset,
                # every data file, with its hash and size (vectors.npy re-ranks IVF-PQ results: it is data too)
                "files": {name: file_sha256(tmp / name) for name in data_files},
                "file_sizes": {name: (tmp / name).stat().st_size for name in data_files},
                "items": items,
                "probe": probe_record,
                "policy": _policy_dict(policy),
                "admissions": list(admissions or []),
                "backfill": None,
            }
            atomic_write_json(tmp / MANIFEST_NAME, manifest)
        logger.info("Built a %s gallery of %d × %d-d at %s", index_type, count, dimension, directory)
        return cls.open(directory)

    @classmethod
    def from_embeddings(cls, directory, embeddings, **kwargs) -> FaissGallery:
        """Build from an :class:`~bt2_hf.galleries.EmbeddingDirectory` (shard by shard), keeping its identity."""
        from .shards import EmbeddingDirectory

        embeddings = embeddings if isinstance(embeddings, EmbeddingDirectory) else EmbeddingDirectory(embeddings)
        kwargs.setdefault("dtype", embeddings.manifest["dtype"])
        if kwargs.get("labels") is None and embeddings.labels() is not None:
            kwargs.update(labels=embeddings.labels(), label_names=kwargs.get("label_names") or embeddings.label_names)
        if kwargs.get("paths") is None and embeddings.paths() is not None:
            kwargs["paths"] = embeddings.paths()
        return cls.build(
            directory,
            embeddings.shards(),
            encoder=embeddings.manifest["model"],
            dataset=embeddings.manifest["dataset"],
            **kwargs,
        )

    @classmethod
    def open(cls, directory: str | os.PathLike, verify: bool = True) -> FaissGallery:
        """Open a gallery: check the manifest and the files' sha256, memory-map the vectors, read the index."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        unlisted = [name for name in DATA_FILES if name not in manifest["files"]]
        if unlisted:
            raise GalleryError(
                f"the manifest lists no sha256 for {', '.join(unlisted)} (a gallery written by an older bt2_hf, or "
                "edited): its content cannot be checked. Rebuild the gallery (`bt2 index build --overwrite`).",
                directory / MANIFEST_NAME,
            )
        for name, size in (manifest.get("file_sizes") or {}).items():
            # cheap, on every open: a truncated or replaced file usually changes size
            actual = (directory / name).stat().st_size if (directory / name).is_file() else None
            if actual != size:
                raise GalleryError(
                    f"{directory / name} holds {actual} bytes, its manifest says {size}: the file is missing, truncated "
                    "or replaced. Rebuild the gallery (`bt2 index build --overwrite`).",
                    directory / name,
                )
        if verify:
            for name, digest in manifest["files"].items():
                if not (directory / name).exists() or file_sha256(directory / name) != digest:
                    raise GalleryError(
                        f"{directory / name} is missing or does not match the sha256 in its manifest: rebuild the "
                        "gallery (`bt2 index build`)."
                    )
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        ids = np.load(directory / "ids.npy", allow_pickle=False)
        base = manifest["count"] - (manifest["appended"]["count"] if manifest.get("appended") else 0)
        if vectors.shape != (base, manifest["dimension"]) or len(ids) != base:
            raise GalleryError(
                f"{directory}: the manifest says {base} × {manifest['dimension']}-d in its base files, the files hold "
                f"{vectors.shape} vectors and {len(ids)} ids; rebuild the gallery."
            )
        faiss = import_faiss()
        index = faiss.read_index(str(directory / "index.faiss"))
        if index.ntotal != base or index.d != manifest["dimension"]:
            raise GalleryError(f"{directory}: index.faiss holds {index.ntotal} × {index.d}-d, not the manifest's.")
        appended = None
        if manifest.get("appended"):
            state = manifest.get("backfill")
            appended = read_appended(directory, manifest, state["dimension"] if state else None, verify,
                                     lambda problem, path: GalleryError(problem, path))  # fmt: skip
            index.add(np.ascontiguousarray(appended.vectors.array, dtype=np.float32))
        gallery = cls(directory, manifest, index, vectors, ids, appended)
        if appended is not None and manifest.get("backfill"):
            gallery._place_appended_in_backfill_order()
        return gallery

    @classmethod
    def from_model(
        cls,
        directory: str | os.PathLike,
        model,
        inputs,
        ids: list | None = None,
        *,
        modality: str | None = None,
        batch_size: int = 64,
        **kwargs,
    ) -> FaissGallery:
        """Embed ``inputs`` (images or texts) with ``model`` in this process and build a gallery of its vectors.

        The model must hold the weights its ``config.fingerprint`` names (a model changed in memory is refused), so
        the manifest's encoder is the model that really made the vectors.

        Args:
            directory (`str` or `os.PathLike`): where the gallery goes.
            model (`BT2Model`): the encoder, saved (it needs a fingerprint).
            inputs (`Sequence`): images (PIL, arrays, a uint8 tensor) or texts.
            ids (`list`, *optional*): one id per input (defaults to ``0..N-1``).
            modality (`str`, *optional*): ``"images"`` or ``"texts"`` (defaults to the model's).
            batch_size (`int`, *optional*, defaults to `64`): inputs per forward pass.
            kwargs: as :meth:`build` (``labels``, ``paths``, ``probe``, ``policy``, ``index_type`` …).
        """
        from ..compatibility import query_model_fingerprint
        from .embed import model_identity

        fingerprint = query_model_fingerprint(model)  # refuse a model changed in memory before embedding
        modality = modality or ("texts" if getattr(model, "modality", "image") == "text" else "images")
        vectors = model.encode(**{modality: inputs}, batch_size=batch_size)
        identity = dict(model_identity(model), fingerprint=fingerprint)
        return cls.build(directory, np.asarray(vectors, dtype=np.float32), ids, encoder=identity, **kwargs)

    # -- the store interface used by search and backfill ----------------------------------------------------------------

    @property
    def base_count(self) -> int:
        """Rows in the base files (``vectors.npy``, ``ids.npy``, ``index.faiss``); the appended rows follow them."""
        return len(self) - (len(self.appended) if self.appended is not None else 0)

    def _split(self, rows) -> tuple[np.ndarray, np.ndarray | None]:
        # (rows, mask of the appended ones), the mask None when every row is a base row (the common, fast case)
        rows = np.asarray(rows, dtype=np.int64)
        if self.appended is None or not len(self.appended):
            return rows, None
        mask = rows >= self.appended.base
        return rows, (mask if mask.any() else None)

    def ids_of(self, rows: np.ndarray) -> list:
        rows, appended = self._split(rows)
        if appended is None:
            return self._ids[rows].tolist()
        ids = self.appended.ids
        return [ids[row - self.appended.base] if late else item
                for row, late, item in zip(rows.tolist(), appended.tolist(),
                                           self._ids[np.where(appended, 0, rows)].tolist())]  # fmt: skip

    @property
    def id_dtype(self) -> np.dtype:
        return self._ids.dtype

    def contains_ids(self, ids: np.ndarray) -> np.ndarray:
        """Whether each of ``ids`` (in the gallery's id type) is already an item of the gallery (appended ones too)."""
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self._ids)  # once per opened gallery: each write then costs log N per id
        ids = np.asarray(ids)
        found = np.zeros(len(ids), dtype=bool)
        if len(self._sorted_ids):
            positions = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self._sorted_ids) - 1)
            found = self._sorted_ids[positions] == ids
        if self.appended is not None:
            found |= np.asarray([item in self.appended.id_set for item in ids.tolist()], dtype=bool)
        return found

    def _base_labels(self) -> np.ndarray | None:
        name = (self.manifest.get("items") or {}).get("labels")
        if name and self._labels is None:
            self._labels = np.load(self.directory / name, allow_pickle=False)
        return self._labels if name else None

    def labels_of(self, rows) -> list | None:
        base = self._base_labels()
        if base is None and not (self.appended is not None and self.appended.has_labels):
            return None
        rows, appended = self._split(rows)
        values = np.full(len(rows), -1, dtype=np.int64)
        if appended is None:
            values[:] = base[rows]
        else:
            if base is not None:
                values[~appended] = base[rows[~appended]]
            late = self.appended.labels  # a list: only the few rows asked for are read (a search's hits)
            values[appended] = [late[position] for position in self.appended.rows_of(rows[appended]).tolist()]
        names = self.label_names
        return [None if v < 0 else (names[v] if names and v < len(names) else int(v)) for v in values.tolist()]

    def paths_of(self, rows) -> list | None:
        name = (self.manifest.get("items") or {}).get("paths")
        if not name and not (self.appended is not None and self.appended.has_paths):
            return None
        if name and self._paths is None:
            self._paths = np.load(self.directory / name, allow_pickle=False)
        rows, appended = self._split(rows)
        base = [str(p) or None for p in self._paths[np.where(appended, 0, rows) if appended is not None else rows]
                ] if name else [None] * len(rows)  # fmt: skip
        if appended is None:
            return base
        late, start = self.appended.paths, self.appended.base
        return [(late[row - start] or None) if is_late else path
                for row, is_late, path in zip(rows.tolist(), appended.tolist(), base)]  # fmt: skip

    def vectors_at(self, rows: np.ndarray) -> np.ndarray:
        rows, appended = self._split(rows)
        if appended is None:
            return np.asarray(self.vectors[rows], dtype=np.float32)
        # One gather of every row (the appended ones read row 0), then the appended rows written over: twice as fast
        # as two masked gathers for a re-ranking's 1,000 candidates.
        late = np.flatnonzero(appended)
        out = np.asarray(self.vectors).take(np.where(appended, 0, rows), axis=0).astype(np.float32, copy=False)
        out[late] = self.appended.vectors.array.take(self.appended.rows_of(rows[late]), axis=0)
        return out

    def iter_vectors(self, chunk: int = CHUNK):
        """``(rows, vectors)`` of the encoder's vectors, a chunk at a time (the base rows, then the appended ones)."""
        base = self.base_count
        for start in range(0, base, chunk):
            stop = min(base, start + chunk)
            yield np.arange(start, stop), np.asarray(self.vectors[start:stop], dtype=np.float32)
        if self.appended is not None:
            array = self.appended.vectors.array
            for start in range(0, len(array), chunk):
                block = array[start : start + chunk]
                yield np.arange(base + start, base + start + len(block)), np.asarray(block, dtype=np.float32)

    def rerank_vectors(self):
        return self.vectors if self.appended is None else _GalleryRows(self.vectors_at)

    def probe(self) -> dict | None:
        """The gallery's probe set: ``embeddings`` (its encoder's), ``labels``, and ``images`` or ``texts``."""
        record = self.manifest.get("probe")
        if not record:
            return None
        folder = self.directory / PROBE_DIR
        probe = {"embeddings": np.load(folder / "embeddings.npy", allow_pickle=False),
                 "labels": np.load(folder / "labels.npy", allow_pickle=False)}  # fmt: skip
        if record.get("modality") == "text":
            probe["texts"] = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
        else:
            probe["images"] = np.load(folder / "items.npy", allow_pickle=False)
        return probe

    def check(self) -> list[str]:
        """Hash every data file listed in the manifest, a chunk at a time; the problems found (empty: all intact).

        Unlike :meth:`open`, it does not stop at the first problem: each damaged, missing or unlisted file is named.
        """
        problems = []
        unlisted = [name for name in DATA_FILES if name not in self.manifest["files"]]
        problems += [f"{name}: not listed in the manifest, so its content cannot be checked" for name in unlisted]
        for name, digest in sorted(self.manifest["files"].items()):
            path = self.directory / name
            if not path.is_file():
                problems.append(f"{path}: missing")
                continue
            size = (self.manifest.get("file_sizes") or {}).get(name)
            if size is not None and path.stat().st_size != size:
                problems.append(f"{path}: {path.stat().st_size} bytes, the manifest says {size}")
            elif file_sha256(path) != digest:
                problems.append(f"{path}: sha256 differs from the manifest's (the content was changed)")
        if self.manifest.get("appended"):
            state = self.backfill_state
            try:
                read_appended(self.directory, self.manifest, state["dimension"] if state else None, True,
                              lambda problem, path: GalleryError(problem, path))  # fmt: skip
            except GalleryError as error:
                problems.append(str(error))
        return problems

    # -- backfill storage: the new model's rows and how far the backfill got -------------------------------------------

    # The backfill's table (backfill/vectors.npy) and its order (order.npy) hold the rows the gallery had when the
    # backfill started. Rows appended during it are its last rows: their new vectors are appended too (backfill.bin)
    # and they count as re-embedded, placed in the order at the ``done`` of their write (so the order's first
    # ``done`` rows only ever grow at their end, as the backfill search's snapshots need). On disk only how many there
    # are is kept: a gallery opened again places them all at the current ``done``, which gives the same first ``done``
    # rows as a set.

    def backfill_table_order(self) -> np.ndarray:
        """``backfill/order.npy``: the order of the rows the backfill table holds (the gallery's when it started)."""
        if self._backfill_table is None:
            self._backfill_table = np.load(self.directory / "backfill" / "order.npy")
        return self._backfill_table

    def _appended_backfilled(self) -> int:
        # rows appended during the backfill: the gallery's last rows, beyond the backfill table
        return len(self) - len(self.backfill_table_order()) if self.backfill_state else 0

    def _place_appended_in_backfill_order(self) -> None:
        late = self._appended_backfilled()
        self._backfill_inserts = []
        if late:
            table_rows = len(self.backfill_table_order())
            self._backfill_inserts = [(int(self.backfill_state["done"]) - late,
                                       np.arange(table_rows, table_rows + late, dtype=np.int64))]  # fmt: skip

    def backfill_order(self) -> np.ndarray:
        """The gallery's rows in backfill order: its first ``done`` rows carry the backfill model's vectors."""
        if self._backfill_order is None:
            order = self.backfill_table_order()
            if self._backfill_inserts:
                positions = np.concatenate([np.full(len(rows), at, dtype=np.int64)
                                            for at, rows in self._backfill_inserts])  # fmt: skip
                order = np.insert(order, positions, np.concatenate([rows for _, rows in self._backfill_inserts]))
            self._backfill_order = order
        return self._backfill_order

    def backfill_vectors(self, rows: np.ndarray) -> np.ndarray:
        table = self._backfill_vectors  # one reference: a commit in another thread may drop the attribute
        if table is None:
            table = self._backfill_vectors = np.load(self.directory / "backfill" / "vectors.npy", mmap_mode="r")
        return self._backfill_rows(table, rows)

    def _backfill_rows(self, table: np.ndarray, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        late = rows >= len(table)
        if not late.any():
            return np.asarray(table[rows], dtype=np.float32)
        out = np.empty((len(rows), table.shape[1]), dtype=np.float32)
        out[~late] = table[rows[~late]]
        out[late] = self.appended.backfill.array[rows[late] - len(table)]
        return out

    def search_backfilled(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``depth`` re-embedded rows by cosine with the backfill model's vectors, best first (-1 pads).

        In memory (:class:`~bt2_hf.galleries.backfill_search.BackfillSearch`), grown by each backfill step's rows:
        exact up to ``EXACT_SCAN_LIMIT`` re-embedded rows, an IVF index beyond (recall against the exact scan
        measured ≥ 0.99 at depths up to 100 on clustered and real embeddings; ``benchmarks/README.md``).

        Args:
            queries (`np.ndarray` of shape `(n, d)`): unit query vectors in the backfill model's space.
            depth (`int`): how many rows to return.
        """
        done = self.backfill_state["done"] if self.backfill_state else 0
        search = self._backfill_search
        if search is None or search.done != done:
            # Built once for the searches that find it missing, not by each (from the files, past the exact limit it
            # trains an index: seconds of CPU at a million rows).
            with self._backfill_search_built:
                search = self._backfill_search
                if search is None or search.done != done:
                    search = self._backfill_search = self.prepare_backfill_search(done)
        return search.search(queries, depth)

    def warm_backfill_search(self) -> None:
        """Build the search over the re-embedded rows now, if a backfill is recorded: a gallery opened mid-backfill
        builds it from the files, which past the exact limit trains an index (seconds of CPU at a million rows), so
        a service warms it when it opens the gallery rather than on its first new-model query."""
        state = self.backfill_state
        if not state or not int(state.get("done") or 0):
            return
        done = int(state["done"])
        with self._backfill_search_built:
            search = self._backfill_search
            if search is None or search.done != done:
                self._backfill_search = self.prepare_backfill_search(done)

    def prepare_backfill_search(self, done: int) -> BackfillSearch:
        """The search over the first ``done`` re-embedded rows (their vectors already written), for
        :meth:`search_backfilled` or :meth:`commit_backfill_batch`.

        It extends the current one by the rows re-embedded since (a commit reads only its batch's rows); from the
        files when there is none (a gallery just opened, e.g. after a restart) or when ``done`` went back.
        """
        current = self._backfill_search
        if current is None or current.done > int(done):
            current = BackfillSearch.empty(self.backfill_state["dimension"], len(self))
        table = np.load(self.directory / "backfill" / "vectors.npy", mmap_mode="r")  # sees rows written since
        rows = _GalleryRows(lambda rows: self._backfill_rows(table, rows))
        return current.extended(self.backfill_order(), rows, int(done))

    def backfilled(self, rows: np.ndarray) -> np.ndarray:
        """Whether each of ``rows`` carries the backfill model's embedding."""
        rows, state = np.asarray(rows), self.backfill_state
        if not state:
            return np.zeros(rows.shape, dtype=bool)
        if self._backfill_rank is None:
            # Each row's place in the table's order, once per backfill: a search asks about its few candidate rows,
            # and a mask of the whole gallery per search cost 0.5 ms at a million items. Rows appended during the
            # backfill (beyond the table) are re-embedded already: no write changes this.
            order = self.backfill_table_order()
            rank = np.full(len(order), np.iinfo(np.int64).max, dtype=np.int64)
            rank[order] = np.arange(len(order))
            self._backfill_rank = rank
        rank, table_done = self._backfill_rank, int(state["done"]) - self._appended_backfilled()
        late = rows >= len(rank)
        return (rank[np.where(late, 0, rows)] < table_done) | late

    def backfilled_mask(self) -> np.ndarray:
        """``mask[row]`` is True when the row carries the backfill model's embedding."""
        mask = np.zeros(len(self), dtype=bool)
        state = self.backfill_state
        if state:
            table = self.backfill_table_order()
            mask[table[: int(state["done"]) - self._appended_backfilled()]] = True
            mask[len(table) :] = True
        return mask

    def start_backfill(self, state: dict, order: np.ndarray) -> None:
        """Create the backfill files (order, an empty row table) and record the backfill in the manifest."""
        folder = self.directory / "backfill"
        if folder.exists():
            shutil.rmtree(folder)  # left by a crash before the manifest recorded it: nothing refers to it
        tmp = self.directory / ".backfill.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.save(tmp / "order.npy", order.astype(np.int64), allow_pickle=False)
        dtype = np.dtype(self.manifest["dtype"])
        table = np.lib.format.open_memmap(
            tmp / "vectors.npy", mode="w+", dtype=dtype, shape=(len(self), state["dimension"])
        )
        del table
        os.replace(tmp, folder)
        self._backfill_order, self._backfill_vectors, self._backfill_search = None, None, None
        self._backfill_rank, self._backfill_table, self._backfill_inserts = None, None, []
        self._write_manifest(dict(self.manifest, backfill=state))

    def update_backfill_state(self, swap=None, **changes) -> None:
        """Record ``changes`` in the manifest's backfill state; ``swap``: as in :meth:`commit_backfill_batch`."""
        manifest = dict(self.manifest, backfill=dict(self.manifest["backfill"], **changes))
        atomic_write_json(self.directory / MANIFEST_NAME, manifest)
        with swap() if swap is not None else contextlib.nullcontext():
            self.manifest = manifest

    def write_backfill_batch(self, rows: np.ndarray, vectors: np.ndarray, done: int) -> None:
        """Write rows of the new model, flush them, then record ``done`` in the manifest (the commit point)."""
        self.write_backfill_rows(rows, vectors)
        self.commit_backfill_batch(done)

    def write_backfill_rows(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """The first half of :meth:`write_backfill_batch`: the rows written and flushed, not yet committed (rows
        beyond ``done``: no search reads them, so a service does this without holding its searches back)."""
        path = self.directory / "backfill" / "vectors.npy"
        _, (table_rows, _), _ = npy_layout(path)
        if len(rows) and np.max(rows) >= table_rows:  # appended rows carry their new vectors from their write
            raise GalleryError(f"Row {np.max(rows)} was appended during the backfill: it is re-embedded already.")
        # Positioned writes and fsync, not a memory map: its page faults cost 30 times the CPU on a fresh table, and
        # its msync keeps the GIL while the pages reach the disk (0.27 s per batch of 1,024 random rows at 1M × 160,
        # every search of the process waiting); fsync releases it. Readers' memory maps see the rows (one page cache).
        write_npy_rows(path, rows, l2_normalize(vectors))

    def commit_backfill_batch(self, done: int, search: tuple | None = None, swap=None) -> None:
        """The commit point: ``done`` recorded in the manifest; ``search``, from :meth:`prepare_backfill_search`
        for this ``done``, is what :meth:`search_backfilled` uses from now on (built before the commit by a service,
        so that its searches wait only for the switch).

        ``swap`` (a callable returning a context manager, e.g. a lock's write side) is held only while this object's
        state switches to the new ``done``, after the manifest file is written (the commit point on disk, with its
        fsyncs: milliseconds that searches of this object need not wait for; they read the state in memory).
        """
        if search is not None and search.done != int(done):
            raise ValueError(f"The prepared search covers {search.done} re-embedded rows, not {done}.")
        manifest = dict(self.manifest, backfill=dict(self.manifest["backfill"], done=int(done)))
        atomic_write_json(self.directory / MANIFEST_NAME, manifest)
        # The replaced memory map and index are freed after the switch, not during it (a millisecond at 100k rows).
        replaced = (self._backfill_vectors, self._backfill_search)
        with swap() if swap is not None else contextlib.nullcontext():
            self._backfill_vectors = None
            self.manifest = manifest
            if search is not None:
                self._backfill_search = search
        del replaced

    def finalize(self, index_type: str | None = None, directory: str | os.PathLike | None = None,
                 **index_params) -> FaissGallery:  # fmt: skip
        """Rebuild this (fully backfilled) gallery from the new model's rows, atomically; the encoder becomes it.

        With ``directory``, the new model's gallery is written there instead (a new directory, never replaced) and
        this one is left as it is: the old gallery stays for a rollback (``bt2 gallery cutover``).
        """
        state = self.backfill_state
        index_type = index_type or self.manifest["index"]["type"]
        table = np.load(self.directory / "backfill" / "vectors.npy", mmap_mode="r")
        items = self.manifest.get("items") or {}
        labels, paths = self.label_codes(), self.all_paths()
        # the table's rows, then those appended during the backfill (their new vectors came with their write)
        rows = [(table, self._ids if len(table) == len(self._ids) else self.ids_of(np.arange(len(table))))]
        if len(table) < len(self):
            late = np.arange(len(table), len(self))
            rows.append((self.backfill_vectors(late), self.ids_of(late)))
        if self.manifest.get("probe"):
            # The probe's embeddings are the old encoder's: the new encoder's gate needs a new probe set.
            logger.warning("The probe set of %s was made by the old encoder and is dropped; rebuild the gallery "
                           "with --probe_from to give the new encoder a gate.", self.directory)  # fmt: skip
        return FaissGallery.build(
            directory or self.directory, rows, encoder=state["model"], index_type=index_type,
            dataset=self.manifest.get("dataset"), dtype=self.manifest["dtype"], overwrite=directory is None, labels=labels,
            label_names=items.get("label_names"), paths=paths, policy=self.manifest.get("policy"),
            admissions=self.admissions, **index_params,
        )  # fmt: skip

    def label_codes(self) -> np.ndarray | None:
        """Every row's class id (-1: unknown), base and appended rows; ``None`` when the gallery stores no labels."""
        base = self._base_labels()
        late = self.appended is not None and self.appended.has_labels
        if base is None and not late:
            return None
        base = base if base is not None else np.full(self.base_count, -1, dtype=np.int64)
        extra = np.asarray(self.appended.labels if self.appended is not None else [], dtype=np.int64)
        return np.concatenate([base, extra]).astype(np.int64)

    def all_paths(self) -> list[str] | None:
        """Every row's path (``""``: none), base and appended rows; ``None`` when the gallery stores no paths."""
        name = (self.manifest.get("items") or {}).get("paths")
        late = self.appended is not None and self.appended.has_paths
        if not name and not late:
            return None
        base = np.load(self.directory / name, allow_pickle=False).tolist() if name else [""] * self.base_count
        return base + (list(self.appended.paths) if self.appended is not None else [])

    def _write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.directory / MANIFEST_NAME, manifest)
        self.manifest = manifest

    # -- rows appended after the build (galleries/append.py writes their files, then hands them over here) ---------------

    def backfill_search_with(self, rows: np.ndarray, vectors: np.ndarray) -> BackfillSearch | None:
        """The current search over re-embedded rows grown by ``rows`` (appended now, with the backfill model's
        ``vectors``), to publish with them; ``None`` when there is no current one (the next search builds it)."""
        current, state = self._backfill_search, self.backfill_state
        if current is None or current.done != int(state["done"]):
            return None
        first = int(rows[0])
        late = _GalleryRows(lambda wanted: np.asarray(vectors[np.asarray(wanted) - first], dtype=np.float32))
        return current.extended(np.concatenate([current.rows, rows]), late, current.done + len(rows))

    def take_appended(self, manifest: dict, vectors: np.ndarray, ids: list, labels, paths, backfill_vectors,
                      search: BackfillSearch | None) -> None:  # fmt: skip
        """Make committed appended rows part of this open gallery: its index, rows and state (``manifest``, the one
        just written). The caller holds its write lock: searches see the gallery before or after, never between."""
        count = len(self)
        if self.appended is None:
            self.appended = AppendedRows(count, self.dimension, self.manifest["dtype"])
        if self.backfill_state:
            self._backfill_inserts.append((int(self.backfill_state["done"]) - self._appended_backfilled(),
                                           np.arange(count, count + len(ids), dtype=np.int64)))  # fmt: skip
            self._backfill_order, self._backfill_search = None, search
        self.appended.add(vectors, ids, labels, paths, backfill_vectors)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.manifest = manifest

    def search(self, queries, k: int = 10, query_config=None, **kwargs):
        """Search with query embeddings and the query model's config; see :func:`bt2_hf.galleries.search_gallery`."""
        from .mixed import search_gallery

        return search_gallery(self, queries, k=k, query_config=query_config, **kwargs)

    def search_with_model(self, model, images=None, texts=None, k: int = 10, batch_size: int = 64, **kwargs):
        """Embed queries with ``model.encode`` and search, checking the model against the gallery first.

        The model must hold the weights its ``config.fingerprint`` names (checked again here: a model changed in
        memory is refused), and is admitted before any query is embedded.
        """
        from ..compatibility import query_model_fingerprint

        query_model_fingerprint(model)
        self.admit(model.config, kwargs.get("allow_unmeasured", False))  # refuse before spending time on encoding
        embeddings = model.encode(images=images, texts=texts, batch_size=batch_size)
        return self.search(embeddings, k=k, query_config=model.config, **kwargs)


class _GalleryRows:
    """Rows of every kind (base and appended) read by gallery row, where a memory map of the base rows was read."""

    def __init__(self, take):
        self.take = take

    def __getitem__(self, rows) -> np.ndarray:
        return self.take(rows)


def _take(vectors, rows: np.ndarray) -> np.ndarray:
    return vectors[rows] if isinstance(vectors, _GalleryRows) else np.asarray(vectors)[rows]


def exact_scores(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosines of each query with its candidate rows, read from (memory-mapped) vectors; -inf for missing rows."""
    scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    valid = rows >= 0
    flat_rows = np.where(valid, rows, 0)
    queries = np.asarray(queries, dtype=np.float32)
    if len(rows) == 1:
        # One query (a served search): its candidates are distinct rows already; sorting them for the memory map
        # costs more than the reads it saves once the vectors are in the page cache.
        # (np.asarray first: indexing the memmap subclass itself costs as much as the gather.)
        exact = (_take(vectors, flat_rows[0]).astype(np.float32, copy=False) @ queries[0])[None, :]
    else:
        unique, inverse = np.unique(flat_rows, return_inverse=True)
        # Sorted unique rows read the memory map sequentially-ish and each row once.
        block = np.asarray(vectors[unique], dtype=np.float32)[inverse.reshape(rows.shape)]
        exact = np.einsum("nkd,nd->nk", block, queries)
    scores[valid] = exact[valid]
    return scores


def rerank_rows(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray, depth: int) -> list[tuple]:
    """Exact re-ranking of one block of queries' candidate ``rows`` of ``vectors``: ``[(scores, rows)]`` parts, each
    the top ``depth`` of its queries, best first (what :meth:`FaissGallery.rerank` runs; ``bt2 plan`` times it)."""
    if len(queries) == 1 and len(rows[0]) and rows[0, -1] >= 0:  # faiss puts missing rows (-1) last
        return [_top_of_one(_take(vectors, rows[0]).astype(np.float32, copy=False) @ queries[0], rows[0], depth)]
    if len(queries) <= PER_QUERY_RERANK:
        # A served micro-batch: each query re-ranked as it would be alone (the same numbers, and the 1-d paths of the
        # gather and the sort are faster than the 2-d ones at this size).
        return [_sort(exact_scores(vectors, queries[i : i + 1], rows[i : i + 1]), rows[i : i + 1], depth)
                for i in range(len(queries))]  # fmt: skip
    return [_sort(exact_scores(vectors, queries, rows), rows, depth)]


_MISSING_LAST = np.iinfo(np.int64).max
# Blocks of up to this many queries (a served micro-batch) are re-ranked one query at a time.
PER_QUERY_RERANK = 64


def _admission_fields(config) -> tuple:
    """What an admission is decided on, of a query config (see ``ManifestAccessors.admit``)."""
    # Read from the instance's attributes where they are (a property such as ``name_or_path`` through getattr): a
    # getattr of an absent attribute raises and catches inside, and a served search asks on every query.
    values = getattr(config, "__dict__", None) or {}
    return tuple(values[name] if name in values else getattr(config, name, None) for name in _ADMISSION_FIELDS)


_ADMISSION_FIELDS = ("embedding_dim", "compatible_with", "training", "adapter", "name_or_path", "_name_or_path")


def _top_of_one(scores: np.ndarray, rows: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``depth`` of one query's ``scores`` of distinct, valid ``rows`` (1-d), as ``(1, depth)`` arrays in the
    evaluator's order: descending score, then ascending row.

    Only the candidates scoring at least the ``depth``-th best can be kept (ties at that score included, so that the
    tie rule decides among them); sorting those few is 10× faster than sorting all of them.
    """
    width = len(scores)
    if depth < width:
        keep = np.flatnonzero(scores >= np.partition(scores, width - depth)[width - depth])
        scores, rows = scores[keep], rows[keep]
    order = np.lexsort((rows, -scores))[:depth]
    return scores[order][None, :], rows[order][None, :]


def _sort(scores: np.ndarray, rows: np.ndarray, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    # Descending score, then ascending row: the evaluator's tie rule; missing rows (-1) last.
    scores = np.where(rows < 0, -np.inf, scores)
    width = scores.shape[-1]
    if depth is not None and depth < width and len(scores) == 1:
        # One query, a few of many candidates: in one dimension (the 2-d helpers' index arithmetic cost as much as
        # the sort itself), missing rows ordered last by a row number past every real one.
        missing = rows[0] < 0
        if not missing.any():
            return _top_of_one(scores[0], rows[0], depth)
        top_scores, top_rows = _top_of_one(scores[0], np.where(missing, _MISSING_LAST, rows[0]), depth)
        return top_scores, np.where(top_rows == _MISSING_LAST, -1, top_rows)
    order = np.lexsort((np.where(rows < 0, _MISSING_LAST, rows), -scores), axis=-1)
    scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return (scores, rows) if depth is None else (scores[:, :depth], rows[:, :depth])


def read_manifest(directory: Path) -> dict:
    """The manifest of a gallery directory, its required keys checked (a former-format gallery is refused)."""
    from ..compatibility.resolve import is_legacy_manifest, legacy_gallery_message
    from ..utils.readers import read_json

    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        raise GalleryError(f"{directory} is not a gallery (no {MANIFEST_NAME}); build one with `bt2 index build`.")
    try:
        manifest = read_json(path, "gallery manifest")
    except BT2InputError as error:
        raise GalleryError(f"{error.problem} Rebuild the gallery (`bt2 index build --overwrite`).", path) from None
    if isinstance(manifest, dict) and is_legacy_manifest(manifest):
        raise LegacyGalleryFormatError(legacy_gallery_message(directory), path)
    if not isinstance(manifest, dict) or manifest.get("kind") != GALLERY_KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise GalleryError(f"not the manifest of a bt2_hf gallery (kind {kind!r}, expected {GALLERY_KIND!r}).", path)
    if manifest.get("format") not in (GALLERY_FORMAT, APPENDED_FORMAT):
        raise GalleryError(f"has format {manifest.get('format')!r}; this bt2_hf reads {GALLERY_FORMAT} and "
                           f"{APPENDED_FORMAT}.", path)  # fmt: skip
    for key, kind in _MANIFEST_KEYS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            problem = "has no" if value is None else f"has a {type(value).__name__} as its"
            raise GalleryError(
                f"the manifest {problem} {key!r} (a {kind.__name__} is needed): it is damaged or was edited. Rebuild "
                "the gallery (`bt2 index build --overwrite`).",
                path,
            )
    if not manifest["encoder"].get("fingerprint"):
        raise GalleryError("the manifest's encoder has no fingerprint; rebuild the gallery.", path)
    sizes = manifest.get("file_sizes", {})
    names_ok = all(_safe_name(name) and isinstance(digest, str) for name, digest in manifest["files"].items())
    sizes_ok = isinstance(sizes, dict) and all(
        _safe_name(name) and isinstance(size, int) and not isinstance(size, bool) for name, size in sizes.items()
    )
    index = manifest["index"]
    if not (names_ok and sizes_ok and index.get("type") in INDEX_TYPES and isinstance(index.get("params"), dict)):
        raise GalleryError("the manifest's files, sizes or index are malformed: it is damaged or was edited. Rebuild "
                           "the gallery (`bt2 index build --overwrite`).", path)  # fmt: skip
    appended = manifest.get("appended")
    if (appended is not None) != (manifest["format"] == APPENDED_FORMAT) or (appended is not None and not (
            isinstance(appended, dict) and isinstance(appended.get("count"), int) and 0 < appended["count"] <=
            manifest["count"] and isinstance(appended.get("files"), dict) and all(
                isinstance(entry, dict) and all(isinstance(entry.get(key), int) and not isinstance(entry[key], bool)
                                                and entry[key] >= 0 for key in ("bytes", "rows"))
                and isinstance(entry.get("digest"), str) for entry in appended["files"].values()))):  # fmt: skip
        raise GalleryError("the manifest's 'appended' record (items added after the build) is malformed or does not "
                           "match its format: it is damaged or was edited.", path)  # fmt: skip
    for key in ("items", "probe", "policy", "backfill"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise GalleryError(f"the manifest's {key!r} must be an object; it is damaged or was edited.", path)
    if not isinstance(manifest.get("admissions", []), list):
        raise GalleryError("the manifest's 'admissions' (the admission log) must be a list; it was edited.", path)
    return manifest


def _safe_name(name) -> bool:
    # a data file's name inside the gallery: never absolute, never upwards, never a NUL (stat would raise)
    return isinstance(name, str) and name and "\x00" not in name and not name.startswith("/") and ".." not in name


def is_gallery_directory(directory: str | os.PathLike) -> bool:
    try:
        return json.loads((Path(directory) / MANIFEST_NAME).read_text()).get("kind") == GALLERY_KIND
    except (OSError, ValueError):
        return False


def _policy_dict(policy) -> dict:
    from ..compatibility import AdmissionPolicy

    if policy is None or isinstance(policy, dict):
        try:
            policy = AdmissionPolicy.from_dict(policy)
        except ValueError as error:
            raise GalleryError(f"Invalid admission policy: {error}.") from None
    return policy.to_dict()


def _write_item_files(folder: Path, count: int, labels, label_names, paths) -> dict:
    """Write ``labels.npy`` / ``paths.npy`` when given; the manifest's ``items`` record."""
    items: dict[str, Any] = {"labels": None, "label_names": None, "paths": None}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
            raise GalleryError(f"labels must be {count} integer class ids (one per item), got {labels.dtype} "
                               f"{labels.shape}.")  # fmt: skip
        np.save(folder / "labels.npy", labels.astype(np.int64), allow_pickle=False)
        items["labels"] = "labels.npy"
        items["label_names"] = [str(name) for name in label_names] if label_names is not None else None
    if paths is not None:
        paths = ["" if p is None else str(p) for p in paths]
        if len(paths) != count:
            raise GalleryError(f"{len(paths)} paths for {count} items: give one path (or dataset row) per item.")
        np.save(folder / "paths.npy", np.asarray(paths, dtype=np.str_), allow_pickle=False)
        items["paths"] = "paths.npy"
    return items


def _write_probe(folder: Path, probe: dict, dimension: int, encoder: dict) -> tuple[dict, list[str]]:
    """Write the probe set into ``folder/probe``; its manifest record and the files written (relative)."""
    embeddings = np.asarray(probe["embeddings"], dtype=np.float32)
    labels = np.asarray(probe["labels"])
    if embeddings.ndim != 2 or embeddings.shape[1] != dimension:
        raise GalleryError(f"The probe embeddings must be {dimension}-d rows of the gallery's encoder, got shape "
                           f"{embeddings.shape}.")  # fmt: skip
    if labels.shape != (len(embeddings),) or not np.issubdtype(labels.dtype, np.integer):
        raise GalleryError(f"The probe needs one integer label per item ({len(embeddings)}), got {labels.shape}.")
    (folder / PROBE_DIR).mkdir()
    np.save(folder / PROBE_DIR / "embeddings.npy", l2_normalize(embeddings), allow_pickle=False)
    np.save(folder / PROBE_DIR / "labels.npy", labels.astype(np.int64), allow_pickle=False)
    files = [f"{PROBE_DIR}/embeddings.npy", f"{PROBE_DIR}/labels.npy"]
    if probe.get("texts") is not None:
        texts = [str(t) for t in probe["texts"]]
        if len(texts) != len(embeddings):
            raise GalleryError(f"{len(texts)} probe texts for {len(embeddings)} probe embeddings.")
        atomic_write_json(folder / PROBE_DIR / "texts.json", texts)
        files.append(f"{PROBE_DIR}/texts.json")
        modality = "text"
    else:
        images = np.asarray(probe["images"])
        if images.dtype != np.uint8 or len(images) != len(embeddings):
            raise GalleryError(f"The probe images must be uint8, one per embedding ({len(embeddings)}), got "
                               f"{images.dtype} {images.shape}.")  # fmt: skip
        np.save(folder / PROBE_DIR / "items.npy", images, allow_pickle=False)
        files.append(f"{PROBE_DIR}/items.npy")
        modality = "image"
    record = {"size": int(len(embeddings)), "modality": modality, "encoder": encoder.get("fingerprint"),
              "num_classes": int(len(np.unique(labels))), **(probe.get("description") or {})}  # fmt: skip
    return record, files


def upgrade_legacy_gallery(directory: str | os.PathLike) -> FaissGallery:
    """Convert, in place and atomically, a gallery written by the former ``GalleryIndex`` into this format.

    The former format kept one ``index.faiss`` (flat, IVF or HNSW over unit vectors) and the ids in its manifest.
    The vectors are read back from the index (checked first against the recorded sha256), so nothing is re-embedded;
    the encoder's name and fingerprint carry over. Its encoder's own lineage was not recorded then, so sideways
    searches through it need a rebuild.

    Raises:
        `GalleryError`: ``directory`` is not a former-format gallery, or its index does not match its manifest.
    """
    import hashlib

    from ..compatibility.resolve import is_legacy_manifest

    directory = Path(directory)
    path = directory / MANIFEST_NAME
    try:
        legacy = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GalleryError(f"{directory} has no {MANIFEST_NAME}: it is not a gallery.", directory) from None
    except json.JSONDecodeError as error:
        raise GalleryError(f"not valid JSON ({error}); it cannot be upgraded.", path) from None
    if not isinstance(legacy, dict) or not is_legacy_manifest(legacy):
        if isinstance(legacy, dict) and legacy.get("kind") == GALLERY_KIND:
            raise GalleryError(f"{directory} is already in the current gallery format: nothing to upgrade.")
        raise GalleryError("not a manifest of the former gallery index format; nothing to upgrade.", path)
    data = (directory / "index.faiss").read_bytes()
    if hashlib.sha256(data).hexdigest() != legacy["index_sha256"]:
        raise GalleryError("does not match the sha256 of its manifest: it was damaged or replaced; rebuild the "
                           "gallery from its embeddings instead (`bt2 index build`).", directory / "index.faiss")  # fmt: skip
    faiss = import_faiss()
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()  # IVF lists do not know their rows' order otherwise
    vectors = index.reconstruct_n(0, index.ntotal)
    ids = legacy.get("ids") or list(range(index.ntotal))
    if len(ids) != index.ntotal or index.d != legacy.get("dimension"):
        raise GalleryError(f"the manifest says {len(ids)} items of {legacy.get('dimension')}-d, the index holds "
                           f"{index.ntotal} of {index.d}-d; rebuild the gallery.", path)  # fmt: skip
    encoder = {"fingerprint": legacy["encoder_fingerprint"], "name_or_path": legacy.get("encoder_name_or_path"),
               "embedding_dim": int(index.d), "compatible_dim": int(index.d), "modality": "image",
               "compatible_with": []}  # fmt: skip
    index_type = legacy.get("index_type") if legacy.get("index_type") in INDEX_TYPES else "flat"
    logger.info("Upgrading %s (%d items, %s) to the gallery format %d.", directory, len(ids), index_type,
                GALLERY_FORMAT)  # fmt: skip
    return FaissGallery.build(directory, vectors, ids, encoder=encoder, index_type=index_type, overwrite=True,
                              dataset={"upgraded_from": "GalleryIndex format 1"})  # fmt: skip
