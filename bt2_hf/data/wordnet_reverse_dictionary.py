"""A real text retrieval set that installs offline: the WordNet reverse dictionary.

Each WordNet synset gives one query and one document: the **query** is the synset's gloss (its definition), the
**document** is its list of lemmas (``"dog, domestic dog, Canis familiaris"``). Retrieval asks: given a definition,
find the words it defines. The text is Princeton's, not ours; it ships with Debian's ``wordnet-base`` package
(``apt-get install wordnet-base``: ``/usr/share/wordnet/data.{noun,verb,adj,adv}``), and is parsed here from the
WordNet database format (``wndb(5WN)``) with no other dependency.

Choices, and why:

- **Example sentences are dropped** from the gloss (the quoted parts after the definition, ``"he singled to start a
  rally"``): they usually contain the headword itself, which would turn the task into string matching.
  ``keep_examples=True`` keeps them.
- **Documents are unique texts**: synsets whose lemma lists are the same text (``"bank"`` has several senses) share
  one document, and each of their queries counts it as relevant; every query has exactly one relevant document.
- **Splits** come from a seeded hash of the synset id (part of speech + byte offset, e.g. ``n02084071``): a synset's
  split depends only on the seed and the split fractions, never on the sizes asked for, and the splits are disjoint
  by construction. Within a split, queries are taken in the order of a second hash, so a smaller set is a prefix of a
  larger one. ``train`` is for fitting (adapters, heads), ``validation`` for choosing settings, ``test`` is reported once.
- **The corpus** holds the document of every query of every split plus distractors (the lemma lists of synsets that
  are no query), up to ``num_documents`` unique texts, so every split searches the same gallery.

Licence: WordNet 3.0 © 2006 Princeton University, under the WordNet 3.0 licence (permissive, BSD-like: use, copy,
modify and distribute for any purpose without fee, keeping the copyright notice; see
https://wordnet.princeton.edu/license-and-commercial-use). Cite: George A. Miller (1995). WordNet: A Lexical
Database for English. Communications of the ACM 38(11): 39-41.

Example:

```python
>>> from bt2_hf.data.wordnet_reverse_dictionary import load_wordnet_reverse_dictionary
>>> data = load_wordnet_reverse_dictionary(num_documents=6000)
>>> data["test"][0]  # {'query_id': 'n03023175', 'text': 'a ...', 'relevant_doc_ids': ['d01234'], ...}
>>> data["corpus"][0]  # {'doc_id': 'd00000', 'text': 'dog, domestic dog, Canis familiaris'}
```
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BT2InputError

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
PART_OF_SPEECH_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
DEFAULT_SPLIT_SIZES = {"train": 3000, "validation": 500, "test": 1000}
INSTALL_HINT = (
    "install Debian's WordNet database (`apt-get install wordnet-base`) or pass the folder holding data.noun"
)

# An adjective lemma may carry a syntactic marker: (a) attributive, (p) predicative, (ip) immediately postnominal.
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")
# The examples of a gloss: double-quoted parts, with the separator before them.
_EXAMPLE = re.compile(r'[;,:]?\s*"[^"]*"')


@dataclass(frozen=True)
class Synset:
    """One synset as the database stores it.

    Args:
        synset_id (`str`): part of speech + 8-digit byte offset (``n02084071``), unique across the four files.
        pos (`str`): ``n``, ``v``, ``a`` (adjectives, satellites included) or ``r``.
        lemmas (`tuple[str, ...]`): the words, underscores turned into spaces, markers removed, in database order.
        gloss (`str`): the full gloss (definition and examples).
    """

    synset_id: str
    pos: str
    lemmas: tuple[str, ...]
    gloss: str

    @property
    def document(self) -> str:
        """The document text: the lemmas joined by ``", "``."""
        return ", ".join(self.lemmas)

    def definition(self, keep_examples: bool = False) -> str:
        """The gloss without its quoted example sentences (unless ``keep_examples``), whitespace collapsed."""
        text = self.gloss if keep_examples else _EXAMPLE.sub("", self.gloss)
        return " ".join(text.split()).strip(" ;,:")


def parse_data_line(line: str, pos: str, path: str | os.PathLike = "") -> Synset | None:
    """One line of a ``data.*`` file as a :class:`Synset`; ``None`` for the licence header (lines starting with two
    spaces). A malformed line raises a `BT2InputError` naming the file and the offset."""
    if line.startswith("  ") or not line.strip():
        return None
    head, separator, gloss = line.partition(" | ")
    fields = head.split()
    try:
        offset, word_count = fields[0], int(fields[3], 16)
        words = fields[4 : 4 + 2 * word_count : 2]
        if len(offset) != 8 or not offset.isdigit() or len(words) != word_count or word_count == 0:
            raise ValueError
    except (IndexError, ValueError):
        raise BT2InputError(
            f"not a WordNet data line ({line[:60]!r}); the file is damaged — reinstall wordnet-base.", path
        ) from None
    lemmas = tuple(_ADJECTIVE_MARKER.sub("", word).replace("_", " ") for word in words)
    return Synset(synset_id=f"{pos}{offset}", pos=pos, lemmas=lemmas, gloss=gloss.strip() if separator else "")


def read_synsets(wordnet_dir: str | os.PathLike | None = None) -> Iterator[Synset]:
    """Every synset of the four ``data.*`` files of a WordNet database folder, in file order (n, v, a, r).

    Raises:
        `BT2InputError`: the folder or one of its data files is missing (naming ``apt-get install wordnet-base``).
    """
    folder = Path(wordnet_dir or DEFAULT_WORDNET_DIR)
    missing = [name for name in PART_OF_SPEECH_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise BT2InputError(f"no WordNet database here (missing {', '.join(missing)}); {INSTALL_HINT}.", folder)
    for pos, name in PART_OF_SPEECH_FILES.items():
        path = folder / name
        with open(path, encoding="utf-8", errors="strict") as handle:
            for line in handle:
                synset = parse_data_line(line, pos, path)
                if synset is not None:
                    yield synset


def _hash_unit(seed: int, key: str, salt: str) -> float:
    """A number in [0, 1) from sha256 of (seed, salt, key): the same on every machine and Python version."""
    digest = hashlib.sha256(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(synset_id: str, seed: int = 0, fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """The split a synset belongs to: a seeded hash of its id placed on the cumulative ``fractions``."""
    position, total = _hash_unit(seed, synset_id, "split"), 0.0
    for split in SPLITS:
        total += fractions[split]
        if position < total:
            return split
    return SPLITS[-1]


def build_reverse_dictionary(
    synsets: list[Synset],
    *,
    num_documents: int = 6000,
    split_sizes: Mapping[str, int] = DEFAULT_SPLIT_SIZES,
    split_fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
    keep_examples: bool = False,
    min_query_words: int = 2,
) -> dict[str, list[dict[str, Any]]]:
    """The retrieval set as plain rows: ``{"corpus": [...], "train": [...], "validation": [...], "test": [...]}``.

    Args:
        synsets (`list[Synset]`): the database (:func:`read_synsets`).
        num_documents (`int`, *optional*, defaults to 6000): unique document texts in the corpus (queries'
            documents first, then distractors).
        split_sizes (`Mapping[str, int]`, *optional*): queries per split.
        split_fractions (`Mapping[str, float]`, *optional*): the hash fractions that assign synsets to splits.
        seed (`int`, *optional*, defaults to 0): the hash seed of the splits and of the order within them.
        keep_examples (`bool`, *optional*, defaults to `False`): keep the gloss's quoted examples in the query.
        min_query_words (`int`, *optional*, defaults to 2): skip synsets whose definition is shorter.

    Returns:
        `dict[str, list[dict]]`: corpus rows ``{doc_id, text}``; query rows ``{query_id, text, pos, lemmas,
        relevant_doc_ids}`` (the qrels: one relevant document per query).

    Raises:
        `ValueError`: bad sizes or fractions, or the database has too few synsets for them.
    """
    if set(split_sizes) != set(SPLITS) or set(split_fractions) != set(SPLITS):
        raise ValueError(f"split_sizes and split_fractions need exactly the splits {SPLITS}.")
    if any(size < 0 for size in split_sizes.values()) or any(f <= 0 for f in split_fractions.values()):
        raise ValueError("Split sizes must be ≥ 0 and split fractions > 0.")
    if abs(sum(split_fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"Split fractions must sum to 1; got {dict(split_fractions)}.")
    usable = [s for s in synsets if len(s.definition(keep_examples).split()) >= min_query_words]
    ordered = sorted(usable, key=lambda s: (_hash_unit(seed, s.synset_id, "order"), s.synset_id))
    chosen: dict[str, list[Synset]] = {split: [] for split in SPLITS}
    for synset in ordered:
        split = split_of(synset.synset_id, seed, split_fractions)
        if len(chosen[split]) < split_sizes[split]:
            chosen[split].append(synset)
    for split in SPLITS:
        if len(chosen[split]) < split_sizes[split]:
            raise ValueError(
                f"Only {len(chosen[split])} synsets fall in split {split!r}; ask for at most that many queries "
                f"(asked {split_sizes[split]})."
            )
    doc_ids: dict[str, str] = {}

    def add_document(text: str) -> str:
        if text not in doc_ids:
            doc_ids[text] = f"d{len(doc_ids):06d}"
        return doc_ids[text]

    rows: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        rows[split] = [
            {
                "query_id": synset.synset_id,
                "text": synset.definition(keep_examples),
                "pos": synset.pos,
                "lemmas": list(synset.lemmas),
                "relevant_doc_ids": [add_document(synset.document)],
            }
            for synset in chosen[split]
        ]
    if len(doc_ids) > num_documents:
        raise ValueError(
            f"The queries alone have {len(doc_ids)} distinct documents, more than num_documents={num_documents}; "
            "ask for more documents or fewer queries."
        )
    queried = {s.synset_id for split in SPLITS for s in chosen[split]}
    for synset in ordered:  # distractors: other synsets' lemma lists, in the same hash order
        if len(doc_ids) >= num_documents:
            break
        if synset.synset_id not in queried:
            add_document(synset.document)
    if len(doc_ids) < num_documents:
        raise ValueError(f"The database has only {len(doc_ids)} distinct documents; ask for at most that many.")
    rows["corpus"] = [{"doc_id": doc_id, "text": text} for text, doc_id in doc_ids.items()]
    return rows


def load_wordnet_reverse_dictionary(
    wordnet_dir: str | os.PathLike | None = None,
    *,
    num_documents: int = 6000,
    split_sizes: Mapping[str, int] = DEFAULT_SPLIT_SIZES,
    split_fractions: Mapping[str, float] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
    keep_examples: bool = False,
):
    """The WordNet reverse dictionary as a `datasets.DatasetDict`: ``corpus``, ``train``, ``validation``, ``test``.

    Args:
        wordnet_dir (`str`, *optional*): a WordNet database folder (default ``/usr/share/wordnet``).
        num_documents, split_sizes, split_fractions, seed, keep_examples: see :func:`build_reverse_dictionary`.

    Returns:
        `datasets.DatasetDict`: ``corpus`` rows ``{doc_id, text}``; each split's rows are queries ``{query_id, text,
        pos, lemmas, relevant_doc_ids}`` (their qrels). Row order is deterministic.

    Raises:
        `BT2InputError`: the WordNet folder is missing or damaged (the message names ``apt-get install wordnet-base``).
    """
    from datasets import Dataset, DatasetDict

    rows = build_reverse_dictionary(
        list(read_synsets(wordnet_dir)),
        num_documents=num_documents,
        split_sizes=split_sizes,
        split_fractions=split_fractions,
        seed=seed,
        keep_examples=keep_examples,
    )
    return DatasetDict({name: Dataset.from_list(rows[name]) for name in ("corpus", *SPLITS)})


__all__ = [
    "DEFAULT_SPLIT_FRACTIONS",
    "DEFAULT_SPLIT_SIZES",
    "DEFAULT_WORDNET_DIR",
    "SPLITS",
    "Synset",
    "build_reverse_dictionary",
    "load_wordnet_reverse_dictionary",
    "parse_data_line",
    "read_synsets",
    "split_of",
]
