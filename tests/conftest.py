"""Shared fixtures: tiny backbones built from configs (no network), and a hermetic environment.

The suite must pass whatever Hugging Face settings the user has exported (``TRANSFORMERS_OFFLINE``, ``HF_TOKEN``,
``HF_HOME``, an accelerate config under the Hub cache …). huggingface_hub, transformers and datasets read most of them
once, at import, so they are cleared here, before any of those libraries is imported, and the caches point into a
temporary home; :func:`_per_test_home` then gives every test a fresh home of its own (in this process and for the
processes tests start: the ``bt2`` CLI, torchrun, accelerate).
"""

from __future__ import annotations

import atexit
import gzip
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

# Cleared from the environment of the tests and of every process they start.
CLEARED_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "ACCELERATE_")
CLEARED_NAMES = ("XDG_CACHE_HOME", "HF_HOME")


def _clear_user_settings() -> None:
    for name in list(os.environ):
        if name.startswith(CLEARED_PREFIXES) or name in CLEARED_NAMES:
            del os.environ[name]


def _first_load_of_this_file():
    """The module object of this file that ran first in this process, or ``None`` if this is the first.

    pytest imports this file as ``conftest``; a test that imports ``tests.conftest`` runs it again as another module.
    The environment is set up once per process: doing it again inside a test would wipe what that test's fixtures set
    (the loopback Hub's ``HF_ENDPOINT`` and ``HF_TOKEN``), and its requests would then reach the Hub without a token.
    """
    here = Path(__file__).resolve()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name != __name__ and path and Path(path).resolve() == here and hasattr(module, "_SESSION_HOME"):
            return module
    return None


OWN_SETTINGS = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
_first_load = _first_load_of_this_file()
if _first_load is not None:
    _SESSION_HOME = _first_load._SESSION_HOME
else:
    _clear_user_settings()
    _SESSION_HOME = Path(tempfile.mkdtemp(prefix="bt2-hf-tests-"))
    atexit.register(shutil.rmtree, _SESSION_HOME, True)  # each test process's caches: gone when it exits
    os.environ["HF_HOME"] = str(_SESSION_HOME / "hf-home")
    os.environ["XDG_CACHE_HOME"] = str(_SESSION_HOME / "xdg-cache")
    # Tests never reach the network: the Hub tests start their own server and set the endpoint themselves.
    os.environ.update(OWN_SETTINGS)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    ConvNextConfig,
    ResNetConfig,
    ViTConfig,
)

# Under pytest-xdist (scripts/run_tests.sh runs one worker per core) the cores are shared out between the workers:
# more torch threads than cores makes every worker an order of magnitude slower. The processes tests start inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_THREADS)

TESTS_ROOT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    """A test that starts several processes is also ``slow``: ``-m "not slow"`` (the inner loop) leaves it out.

    Each test package is one xdist group (``--dist loadgroup``): its session and module fixtures (trained tiny models,
    built galleries) are made once, by the worker that runs the package, not once per worker.
    """
    for item in items:
        if item.get_closest_marker("multiprocess") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(TESTS_ROOT):  # (a test may run pytest on files of its own, elsewhere)
            item.add_marker(pytest.mark.xdist_group(path.relative_to(TESTS_ROOT).parts[0]))


@pytest.fixture(scope="session", autouse=True)
def _hermetic_session():
    """The whole session runs without the user's Hugging Face settings (cleared at import, above)."""
    yield
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _per_test_home(monkeypatch, tmp_path_factory):
    """A fresh, empty home per test: ``HF_HOME`` and ``XDG_CACHE_HOME`` for child processes, and the cache paths
    huggingface_hub (and datasets, once imported) computed at import, for this process.

    Fixtures that need other values (the loopback Hub's ``HF_ENDPOINT`` and cache) set them after this one.
    """
    from huggingface_hub import constants

    for name in list(os.environ):  # anything an earlier test (or a library it ran) left behind
        if (name.startswith(CLEARED_PREFIXES) or name in CLEARED_NAMES) and name not in OWN_SETTINGS:
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("home")
    hf_home = home / "huggingface"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    for name, value in {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hf_home / "hub",
        "HF_ASSETS_CACHE": hf_home / "assets",
        "HF_XET_CACHE": hf_home / "xet",
        "HF_TOKEN_PATH": hf_home / "token",
        "HF_STORED_TOKENS_PATH": hf_home / "stored_tokens",
    }.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, str(value))
    if "datasets.config" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets.config"], "HF_DATASETS_CACHE", hf_home / "datasets")


# name -> (backbone_type, backbone_config, modality)
TINY_BACKBONES: dict[str, tuple[str, dict, str]] = {
    "small_cnn": ("small_cnn", {"num_channels": 1, "widths": [8, 16], "image_size": 28}, "image"),
    "resnet": (
        "hf_vision",
        ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
        ).to_dict(),
        "image",
    ),
    "vit": (
        "hf_vision",
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
            num_channels=3,
        ).to_dict(),
        "image",
    ),
    "convnext": (
        "hf_vision",
        ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32).to_dict(),
        "image",
    ),
    "clip_vision": (
        "hf_vision",
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=16,
        ).to_dict(),
        "image",
    ),
    "bert": (
        "hf_text",
        BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
        ).to_dict(),
        "text",
    ),
    "clip_text": (
        "hf_text",
        CLIPTextConfig(
            vocab_size=99,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            projection_dim=16,
        ).to_dict(),
        "text",
    ),
    "open_clip_vision": (
        "open_clip_vision",
        {
            "model_cfg": {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 2, "layers": 1},
            }
        },
        "image",
    ),
    "open_clip_text": (
        "open_clip_text",
        {
            "model_cfg": {
                "embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 2, "layers": 1},
            }
        },
        "text",
    ),
}


def tiny_inputs(name: str, batch_size: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random model inputs that fit the tiny backbone ``name``."""
    generator = torch.Generator().manual_seed(seed)
    backbone_type, backbone_config, modality = TINY_BACKBONES[name]
    if modality == "text":
        # open_clip text towers take fixed-length token sequences (their context length).
        length = 16 if backbone_type == "open_clip_text" else 12
        input_ids = torch.randint(1, 99, (batch_size, length), generator=generator)
        attention_mask = torch.ones(batch_size, length, dtype=torch.long)
        attention_mask[0, 8:] = 0
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    channels = backbone_config.get("num_channels", 3)
    size = 28 if name == "small_cnn" else 32
    return {"pixel_values": torch.randn(batch_size, channels, size, size, generator=generator)}


@pytest.fixture
def tiny_backbones() -> dict[str, tuple[str, dict, str]]:
    return TINY_BACKBONES


def write_fashion_like_idx(directory: Path, train_per_class: int = 40, test_per_class: int = 12) -> Path:
    """Write Fashion-MNIST-shaped gzipped IDX files (10 classes, 28×28) into ``directory`` and return it.

    Each class is a bright horizontal band at a class-specific height plus noise, so tiny models learn it quickly.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, per_class, seed in (("train", train_per_class, 0), ("t10k", test_per_class, 1)):
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 60, size=(len(labels), 28, 28))
        for row, label in enumerate(labels):
            images[row, 2 + 2 * label : 5 + 2 * label, 4:24] = 220
        order = rng.permutation(len(labels))
        for kind, array in (("images-idx3", images[order]), ("labels-idx1", labels[order])):
            header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
            with gzip.open(directory / f"{prefix}-{kind}-ubyte.gz", "wb") as handle:
                handle.write(header + array.astype(np.uint8).tobytes())
    return directory
