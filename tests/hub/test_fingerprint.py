"""Fingerprints: stable over re-saves and layouts, sensitive to one weight, checked at load."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file

from bt2_hf import BT2Model, FingerprintMismatchError, fingerprint_model, fingerprint_state_dict
from bt2_hf.hub import is_fingerprint

from .conftest import embed


def _recorded(path) -> str:
    return json.loads((path / "config.json").read_text())["fingerprint"]


def test_fingerprint_is_written_and_verified(tmp_path, bt2_model):
    bt2_model.save_pretrained(tmp_path / "ckpt")
    recorded = _recorded(tmp_path / "ckpt")
    assert is_fingerprint(recorded)
    assert recorded == fingerprint_model(bt2_model)
    loaded = BT2Model.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.fingerprint == recorded
    torch.testing.assert_close(embed(loaded), embed(bt2_model))


def test_fingerprint_stable_across_resave(tmp_path, bt2_model):
    bt2_model.save_pretrained(tmp_path / "a")
    BT2Model.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    assert _recorded(tmp_path / "a") == _recorded(tmp_path / "b")


def test_fingerprint_independent_of_sharding_and_key_order(tmp_path, bt2_model):
    bt2_model.save_pretrained(tmp_path / "single")
    bt2_model.save_pretrained(tmp_path / "sharded", max_shard_size="2KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1, "the sharded save should really be sharded"
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert _recorded(tmp_path / "single") == _recorded(tmp_path / "sharded")
    loaded = BT2Model.from_pretrained(tmp_path / "sharded")  # verifies the fingerprint over all shards
    assert loaded.config.fingerprint == _recorded(tmp_path / "single")

    state = bt2_model.state_dict()
    reversed_state = OrderedDict((k, state[k]) for k in reversed(list(state)))
    assert fingerprint_state_dict(reversed_state) == fingerprint_state_dict(state)


def test_fingerprint_sensitive_to_one_weight(bt2_model):
    before = fingerprint_model(bt2_model)
    with torch.no_grad():
        name, parameter = next(iter(bt2_model.named_parameters()))
        parameter.view(-1)[0] += 1e-3
    assert fingerprint_model(bt2_model) != before, name


def test_fingerprint_sensitive_to_dtype(bt2_model):
    assert fingerprint_model(bt2_model) != fingerprint_state_dict(
        {k: v.to(torch.float64) for k, v in bt2_model.state_dict().items()}
    )


def test_tampered_weights_are_refused(tmp_path, bt2_model):
    path = tmp_path / "ckpt"
    bt2_model.save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 0.5
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FingerprintMismatchError) as error:
        BT2Model.from_pretrained(path)
    message = str(error.value)
    assert str(path) in message and "re-save" in message.lower()
    # An explicit opt-out still loads (for deliberate edits).
    BT2Model.from_pretrained(path, verify_fingerprint=False)
