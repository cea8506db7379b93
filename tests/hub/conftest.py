"""Fixtures for the Hub tests: tiny old / new models, and a loopback Hub server selected as the endpoint.

How the endpoint is switched (and why this way): ``huggingface_hub`` reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once,
at import, into ``huggingface_hub.constants``; the top-level ``tests/conftest.py`` sets ``HF_HUB_OFFLINE=1`` before
that import. Every URL the client builds reads ``constants.ENDPOINT`` / ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` at
call time and every request checks ``constants.HF_HUB_OFFLINE`` at call time, so patching those module attributes
(as huggingface_hub's own test-suite does) re-targets the real client in-process. Two objects capture the endpoint
earlier and are patched too: the module-level ``huggingface_hub.hf_api.api`` (behind ``model_info``, ``create_repo``…)
and transformers' lazily created shared ``HfApi`` (reset to ``None`` so that it is rebuilt). One test also runs a
push and a pull in a child process configured only through ``HF_ENDPOINT``, the way users select an endpoint.
"""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import constants

from bt2_hf import BT2Config, BT2Model
from bt2_hf.hub.local_server import DEFAULT_TOKEN, HubServer

SMALL_CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}


def make_old_model(seed: int = 0, embedding_dim: int = 16) -> BT2Model:
    """A tiny linear-head image model (the "old" model of an update)."""
    torch.manual_seed(seed)
    config = BT2Config(
        backbone_type="small_cnn", backbone_config=SMALL_CNN, embedding_dim=embedding_dim, num_classes=5
    )
    return BT2Model(config).eval()


def make_bt2_model(seed: int = 1, old_dim: int = 16, feature_dim: int = 16, extra_dim: int = 4) -> BT2Model:
    """A tiny BT² image model whose first ``old_dim`` dimensions are the compatible block."""
    torch.manual_seed(seed)
    config = BT2Config(
        backbone_type="small_cnn",
        backbone_config=SMALL_CNN,
        head_type="basis_transformation",
        feature_dim=feature_dim,
        old_embedding_dim=old_dim,
        extra_dim=extra_dim,
        num_classes=5,
        training={"method": "bt2", "dataset": "synthetic", "epochs": 1, "learning_rate": 0.01},
    )
    return BT2Model(config).eval()


def embed(model: BT2Model, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model(pixel_values=torch.randn(3, 1, 28, 28, generator=generator)).embeddings


FAKE_RESULTS = {
    # Fake but plausible numbers (percent), in the one results schema (PairReport.to_dict): for card tests only.
    "results": {
        "old/old": {"top1": 58.3, "top5": 80.1, "mAP": 31.2},
        "new/old": {"top1": 61.0, "top5": 82.4, "mAP": 33.5},
        "new/new": {"top1": 70.2, "top5": 88.1, "mAP": 40.9},
    },
}
# The held-out data the fake numbers claim to come from (a measured entry must name it).
FAKE_DATASET = {"name": "synthetic", "split": "test", "size": 120, "sha256": "0" * 64}


@pytest.fixture
def old_model() -> BT2Model:
    return make_old_model()


@pytest.fixture
def bt2_model() -> BT2Model:
    return make_bt2_model()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running loopback Hub, selected as huggingface_hub's endpoint, online mode, with a private cache.

    Yields the :class:`HubServer`; ``hub.cache_dir`` is the Hub cache used by the test.
    """
    import huggingface_hub.hf_api as hf_api_module
    import transformers.utils.hub as transformers_hub

    server = HubServer().start()
    cache_dir = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(hf_api_module.api, "endpoint", server.url)
    monkeypatch.setattr(transformers_hub, "_hf_api", None)
    server.cache_dir = str(cache_dir)
    server.token = DEFAULT_TOKEN
    try:
        yield server
    finally:
        server.stop()  # idempotent: a test may have stopped it already to check offline loading
