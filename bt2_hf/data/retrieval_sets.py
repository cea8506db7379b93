"""Retrieval sets: queries, documents (a corpus of texts or images) and relevance judgements (qrels).

Instance-level evaluation data, as used by ``bt2 verify`` on a retrieval set (text → text, caption → image). Two
on-disk forms, read by :func:`load_retrieval_set`:

- a folder of JSONL files (one JSON object a line; the BEIR layout, in JSONL):

  - ``queries.jsonl``: ``{"id": "q1", "text": "a small domesticated carnivore"}``
  - ``corpus.jsonl``: ``{"id": "d7", "text": "cat"}`` for text documents, or ``{"id": "d7", "image": "images/7.png"}``
    for images (a path relative to the folder);
  - ``qrels.jsonl`` or ``qrels/<split>.jsonl``: ``{"query_id": "q1", "corpus_id": "d7", "score": 1}`` (``score``:
    graded relevance ≥ 0, optional, default 1; a pair with score 0 is judged not relevant);

  ``_id`` is accepted for ``id``, and ``doc_id`` for ``corpus_id`` (BEIR's spellings).
- a ``datasets.DatasetDict`` saved with ``save_to_disk`` whose splits are ``queries``, ``corpus`` and ``qrels``
  (or ``qrels_<split>``), with the same columns (``image``: an ``Image`` feature or a path).

Only the queries that have at least one relevant document in the qrels of the split are evaluated (a query without
one has no defined metric); every document of the corpus is searched. :meth:`RetrievalSet.content_sha256` identifies
the evaluated content (the queries' ids and texts, the documents' ids and content, the judgements), whatever file
it was read from.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BT2InputError
from ..utils.readers import read_jsonl

QUERY_FILE, CORPUS_FILE, QRELS_FILE = "queries.jsonl", "corpus.jsonl", "qrels.jsonl"
_ID_KEYS = ("id", "_id")
_DOC_KEYS = ("corpus_id", "doc_id")


@dataclass
class RetrievalSet:
    """The evaluated part of a retrieval set.

    Args:
        name (`str`), split (`str`): recorded with every measurement.
        query_ids (`list[str]`), queries (`list[str]`): the evaluated queries (each has a relevant document).
        document_ids (`list[str]`), documents (`list`): the corpus: texts, or images (PIL images or file paths).
        document_modality (`str`): ``"text"`` or ``"image"``.
        qrels (`dict[str, dict[str, float]]`): ``{query_id: {document_id: score}}``, scores > 0 only.
    """

    name: str
    split: str
    query_ids: list[str]
    queries: list[str]
    document_ids: list[str]
    documents: list[Any]
    document_modality: str
    qrels: dict[str, dict[str, float]]

    def relevance(self) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
        """``(relevance, gains)``: functions of query rows giving their dense boolean relevance and graded gains over
        the corpus (one chunk of queries at a time: a 10k × 1M matrix is never built)."""
        column = {doc_id: i for i, doc_id in enumerate(self.document_ids)}
        judged = [
            (np.array([column[d] for d in self.qrels[q]], dtype=np.int64), np.array(list(self.qrels[q].values())))
            for q in self.query_ids
        ]

        def gains(rows: np.ndarray) -> np.ndarray:
            block = np.zeros((len(rows), len(self.document_ids)))
            for out, row in enumerate(rows):
                columns, scores = judged[row]
                block[out, columns] = scores
            return block

        return (lambda rows: gains(rows) > 0), gains

    def content_sha256(self) -> str:
        """sha256 over the evaluated queries, the documents (texts, or each image's pixels) and the judgements."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.query_ids, self.queries], ensure_ascii=False).encode())
        digest.update(json.dumps(self.document_ids, ensure_ascii=False).encode())
        for document in self.documents:
            if isinstance(document, str) and self.document_modality == "text":
                digest.update(json.dumps(document, ensure_ascii=False).encode())
            else:
                pixels = np.asarray(_open_image(document))
                digest.update(f"{pixels.dtype}|{list(pixels.shape)}\n".encode())
                digest.update(np.ascontiguousarray(pixels).tobytes())
        judged = sorted((q, d, float(s)) for q, docs in self.qrels.items() for d, s in docs.items())
        digest.update(json.dumps(judged).encode())
        return digest.hexdigest()

    def load_documents(self) -> list[Any]:
        """The documents ready for ``encode``: texts, or RGB PIL images."""
        if self.document_modality == "text":
            return list(self.documents)
        return [_open_image(document).convert("RGB") for document in self.documents]


def _open_image(document: Any):
    from PIL import Image

    if isinstance(document, (str, os.PathLike)):
        try:
            with Image.open(document) as image:
                image.load()
                return image
        except (OSError, ValueError) as error:
            raise BT2InputError(f"cannot read the image ({type(error).__name__}: {error}).", document) from None
    return document


def is_retrieval_set(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a retrieval set (the JSONL files, or a ``save_to_disk`` folder with those splits)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return False
    if (path / QUERY_FILE).is_file() and (path / CORPUS_FILE).is_file():
        return True
    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        try:
            splits = json.loads(dict_file.read_text(encoding="utf-8")).get("splits", [])
        except (json.JSONDecodeError, AttributeError):
            return False
        return {"queries", "corpus"} <= set(splits)
    return False


def _field(row: dict[str, Any], keys: tuple[str, ...], where: Any, number: int) -> Any:
    for key in keys:
        if row.get(key) not in (None, ""):
            return row[key]
    raise BT2InputError(f"row {number} has no {' or '.join(repr(k) for k in keys)} field.", where)


def _tables_from_folder(path: Path, split: str) -> tuple[list, list, list, Any]:
    qrels_path = path / "qrels" / f"{split}.jsonl"
    if not qrels_path.is_file():
        qrels_path = path / QRELS_FILE
    if not qrels_path.is_file():
        raise BT2InputError(
            f"has no {QRELS_FILE} nor qrels/{split}.jsonl: the relevance judgements are missing.", path
        )
    return read_jsonl(path / QUERY_FILE), read_jsonl(path / CORPUS_FILE), read_jsonl(qrels_path), qrels_path


def _tables_from_dataset_dict(path: Path, split: str) -> tuple[list, list, list, Any]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise BT2InputError(f"not a datasets folder written by save_to_disk ({error}).", path) from None
    qrels_split = f"qrels_{split}" if f"qrels_{split}" in loaded else "qrels"
    missing = [name for name in ("queries", "corpus", qrels_split) if name not in loaded]
    if missing:
        raise BT2InputError(
            f"has no {missing} split(s); a retrieval set's DatasetDict has 'queries', 'corpus' and 'qrels' (or "
            f"'qrels_{split}'). It has {sorted(loaded)}.",
            path,
        )
    return [list(loaded[name]) for name in ("queries", "corpus", qrels_split)] + [f"{path}[{qrels_split}]"]


def load_retrieval_set(
    path: str | os.PathLike,
    split: str = "test",
    *,
    dataset_name: str | None = None,
    max_queries: int | None = None,
    seed: int = 0,
) -> RetrievalSet:
    """Read a retrieval set (see the module docstring for both layouts) and keep the queries that can be evaluated.

    Args:
        path (`str` or `os.PathLike`): the folder.
        split (`str`, *optional*, defaults to `"test"`): which qrels to use (``qrels/<split>.jsonl`` or the
            ``qrels_<split>`` split when present, else ``qrels.jsonl`` / ``qrels``); recorded.
        dataset_name (`str`, *optional*): the name recorded (default: the folder's name).
        max_queries (`int`, *optional*): evaluate at most this many queries (a seeded random subset; the corpus is
            kept whole).
        seed (`int`, *optional*, defaults to 0): the subset's seed.

    Raises:
        `BT2InputError`: a missing file or field, a duplicate id, a judgement naming an unknown query or document, a
        negative or non-numeric score, a corpus mixing texts and images, or no query with a relevant document.
    """
    path = Path(path).expanduser()
    if not is_retrieval_set(path):
        raise BT2InputError(
            f"is not a retrieval set: expected {QUERY_FILE}, {CORPUS_FILE} and {QRELS_FILE} (or qrels/<split>.jsonl), "
            "or a DatasetDict saved with save_to_disk with 'queries', 'corpus' and 'qrels' splits.",
            path,
        )
    if (path / QUERY_FILE).is_file():
        query_rows, corpus_rows, qrel_rows, qrels_where = _tables_from_folder(path, split)
    else:
        query_rows, corpus_rows, qrel_rows, qrels_where = _tables_from_dataset_dict(path, split)

    queries: dict[str, str] = {}
    for number, row in enumerate(query_rows, 1):
        query_id, text = str(_field(row, _ID_KEYS, path / QUERY_FILE, number)), row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BT2InputError(f"query {query_id!r} (row {number}) has no text.", path / QUERY_FILE)
        if query_id in queries:
            raise BT2InputError(f"query id {query_id!r} appears twice.", path / QUERY_FILE)
        queries[query_id] = text
    document_ids, documents, modalities = [], [], set()
    seen: set[str] = set()
    for number, row in enumerate(corpus_rows, 1):
        doc_id = str(_field(row, _ID_KEYS, path / CORPUS_FILE, number))
        if doc_id in seen:
            raise BT2InputError(f"document id {doc_id!r} appears twice.", path / CORPUS_FILE)
        seen.add(doc_id)
        if row.get("image") is not None:
            image = row["image"]
            documents.append(path / image if isinstance(image, str) else image)
            modalities.add("image")
        else:
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise BT2InputError(
                    f"document {doc_id!r} (row {number}) has neither text nor image.", path / CORPUS_FILE
                )
            title = row.get("title")
            documents.append(f"{title} {text}" if isinstance(title, str) and title.strip() else text)
            modalities.add("text")
        document_ids.append(doc_id)
    if len(modalities) != 1:
        raise BT2InputError(
            "the corpus is empty" if not modalities else "the corpus mixes texts and images; use one modality.",
            path / CORPUS_FILE,
        )
    qrels: dict[str, dict[str, float]] = {}
    for number, row in enumerate(qrel_rows, 1):
        query_id = str(_field(row, ("query_id",), qrels_where, number))
        doc_id = str(_field(row, _DOC_KEYS, qrels_where, number))
        score = row.get("score", 1)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not score >= 0:
            raise BT2InputError(f"row {number} has score {score!r}; a score is a number ≥ 0.", qrels_where)
        if query_id not in queries:
            raise BT2InputError(f"row {number} judges unknown query {query_id!r}.", qrels_where)
        if doc_id not in seen:
            raise BT2InputError(f"row {number} judges unknown document {doc_id!r}.", qrels_where)
        if score > 0:
            qrels.setdefault(query_id, {})[doc_id] = float(score)
    query_ids = [q for q in queries if q in qrels]
    if not query_ids:
        raise BT2InputError(f"no query of split {split!r} has a relevant document (score > 0) in the qrels.", path)
    if max_queries is not None and len(query_ids) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(len(query_ids), size=max_queries, replace=False))
        query_ids = [query_ids[i] for i in rows]
    return RetrievalSet(
        name=dataset_name or path.name,
        split=split,
        query_ids=query_ids,
        queries=[queries[q] for q in query_ids],
        document_ids=document_ids,
        documents=documents,
        document_modality=modalities.pop(),
        qrels={q: qrels[q] for q in query_ids},
    )
