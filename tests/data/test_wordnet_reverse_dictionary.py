"""The WordNet reverse dictionary: parsing the database format, deterministic disjoint splits, qrels, the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from bt2_hf.data.wordnet_reverse_dictionary import (
    SPLITS,
    build_reverse_dictionary,
    load_wordnet_reverse_dictionary,
    parse_data_line,
    read_synsets,
    split_of,
)
from bt2_hf.errors import BT2InputError

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2 Princeton University  \n"
REAL_WORDNET = Path("/usr/share/wordnet")


def _line(offset: int, pos: str, words: list[str], gloss: str) -> str:
    lemmas = " ".join(f"{word} 0" for word in words)
    return f"{offset:08d} 05 {pos} {len(words):02x} {lemmas} 001 @ 00000001 {pos} 0000 | {gloss}  \n"


def write_fixture(folder: Path, per_pos: int = 30) -> Path:
    """A tiny WordNet database: ``per_pos`` synsets per part of speech, two of them sharing a lemma list."""
    folder.mkdir(parents=True, exist_ok=True)
    for pos, name in (("n", "data.noun"), ("v", "data.verb"), ("a", "data.adj"), ("r", "data.adv")):
        lines = [HEADER]
        for i in range(per_pos):
            words = [f"{name[5:]}_word_{i}", f"alt{i}(p)"] if i % 3 == 0 else [f"{name[5:]}_word_{i}"]
            if i == per_pos - 1:
                words = [f"{name[5:]}_word_0", "alt0(p)"]  # same lemma list as synset 0: one shared document
            gloss = f'the {name[5:]} meaning number {i} of this tiny lexicon; "an example with {name[5:]}_word_{i}"'
            lines.append(_line(1000 + 100 * i, pos, words, gloss))
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


SIZES = {"train": 40, "validation": 10, "test": 15}
FRACTIONS = {"train": 0.5, "validation": 0.2, "test": 0.3}


def test_parse_line_strips_markers_underscores_and_examples():
    synset = parse_data_line(_line(1234, "a", ["big_top", "huge(ip)"], 'very large; "a huge house"'), "a")
    assert synset.synset_id == "a00001234" and synset.lemmas == ("big top", "huge")
    assert synset.document == "big top, huge"
    assert synset.definition() == "very large"
    assert synset.definition(keep_examples=True) == 'very large; "a huge house"'
    assert parse_data_line(HEADER.splitlines()[0], "n") is None
    with pytest.raises(BT2InputError, match="wordnet-base"):
        parse_data_line("0000 not a line | gloss", "n", "data.noun")


def test_missing_database_names_the_package(tmp_path):
    with pytest.raises(BT2InputError, match="apt-get install wordnet-base"):
        list(read_synsets(tmp_path / "nowhere"))


def test_builder_is_deterministic_disjoint_and_consistent(tmp_path):
    synsets = list(read_synsets(write_fixture(tmp_path / "wn")))
    assert len(synsets) == 120
    rows = build_reverse_dictionary(synsets, num_documents=100, split_sizes=SIZES, split_fractions=FRACTIONS, seed=3)
    again = build_reverse_dictionary(synsets, num_documents=100, split_sizes=SIZES, split_fractions=FRACTIONS, seed=3)
    assert rows == again
    ids = {split: [row["query_id"] for row in rows[split]] for split in SPLITS}
    assert {split: len(ids[split]) for split in SPLITS} == SIZES
    assert not set(ids["train"]) & set(ids["validation"]) and not set(ids["train"]) & set(ids["test"])
    assert not set(ids["validation"]) & set(ids["test"])
    # a synset's split is its hash's, whatever the sizes asked for
    for split in SPLITS:
        assert all(split_of(query_id, 3, FRACTIONS) == split for query_id in ids[split])
    smaller = build_reverse_dictionary(
        synsets, num_documents=60, split_sizes={"train": 10, "validation": 5, "test": 5}, split_fractions=FRACTIONS,
        seed=3,
    )  # fmt: skip
    assert [row["query_id"] for row in smaller["test"]] == ids["test"][:5]  # a prefix of the larger set
    # qrels: each query's one relevant document is its synset's lemma list, and it is in the corpus
    by_id = {row["doc_id"]: row["text"] for row in rows["corpus"]}
    assert len(by_id) == 100 and len(set(by_id.values())) == 100
    by_synset = {s.synset_id: s for s in synsets}
    for split in SPLITS:
        for row in rows[split]:
            synset = by_synset[row["query_id"]]
            assert row["relevant_doc_ids"] == [next(k for k, v in by_id.items() if v == synset.document)]
            assert row["text"] == synset.definition() and '"' not in row["text"]
    other_seed = build_reverse_dictionary(
        synsets, num_documents=100, split_sizes=SIZES, split_fractions=FRACTIONS, seed=4
    )
    assert [row["query_id"] for row in other_seed["test"]] != ids["test"]


def test_too_many_queries_is_refused(tmp_path):
    synsets = list(read_synsets(write_fixture(tmp_path / "wn", per_pos=5)))
    with pytest.raises(ValueError, match="ask for at most"):
        build_reverse_dictionary(synsets, num_documents=15, split_sizes={"train": 50, "validation": 1, "test": 1})


def test_dataset_dict_from_the_fixture(tmp_path):
    data = load_wordnet_reverse_dictionary(
        write_fixture(tmp_path / "wn"), num_documents=100, split_sizes=SIZES, split_fractions=FRACTIONS
    )
    assert set(data) == {"corpus", *SPLITS}
    assert data["corpus"].column_names == ["doc_id", "text"]
    assert data["test"].column_names == ["query_id", "text", "pos", "lemmas", "relevant_doc_ids"]
    assert data["test"].num_rows == SIZES["test"]


@pytest.mark.skipif(not (REAL_WORDNET / "data.noun").is_file(), reason="Debian's wordnet-base is not installed")
def test_real_wordnet_splits_are_disjoint_and_sized():
    data = load_wordnet_reverse_dictionary(REAL_WORDNET, num_documents=5000)
    corpus_ids = set(data["corpus"]["doc_id"])
    assert len(corpus_ids) == 5000 and len(set(data["corpus"]["text"])) == 5000
    seen: set[str] = set()
    for split in SPLITS:
        ids = set(data[split]["query_id"])
        assert not ids & seen
        seen |= ids
        assert all(doc in corpus_ids for docs in data[split]["relevant_doc_ids"] for doc in docs)
    line = next(x for x in (REAL_WORDNET / "data.noun").open(encoding="utf-8") if x.startswith("02084071 "))
    dog = parse_data_line(line, "n")
    assert dog.document == "dog, domestic dog, Canis familiaris"
