"""`bt2 --help` tells the story in order and answers at once: parsing never imports torch, transformers or faiss.

The import of ``bt2_hf`` is light, yet ``AutoConfig`` / ``AutoModel`` / ``AutoImageProcessor`` know bt2_hf checkpoints
as soon as transformers is imported, whichever import comes first.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bt2_hf.cli.main import STORY

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "faiss", "rich", "pymilvus")
OWN_COMMANDS = [
    "demo",
    "train",
    "verify",
    "embed",
    "push",
    "card",
    "eval",
    "eval-text",
    "series",
    "hub-serve",
    "image-text",
    "text-tower",
    "text-upgrade",
]


def _python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_bt2_help_tells_the_story_in_order():
    assert list(STORY) == ["demo", "train", "verify", "embed", "index", "search", "backfill", "push"]
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, "-m", "bt2_hf.cli.main", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert time.perf_counter() - started < 2.0
    positions = [output.index(f"\n  {name} ") for name in STORY]
    assert positions == sorted(positions)


@pytest.mark.parametrize("command", ["", *OWN_COMMANDS])
def test_help_imports_nothing_heavy(command):
    argv = [command, "--help"] if command else ["--help"]
    output = _python(
        "import contextlib, io, sys\n"
        "from bt2_hf.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), 'Example' in out.getvalue())"
    )
    heavy, has_example = output.split("] ")
    assert heavy + "]" == "[]", f"`bt2 {command} --help` imported {heavy}]"
    assert has_example.strip() == "True", f"`bt2 {command} --help` shows no example"


def test_train_overview_names_every_registered_method():
    from bt2_hf.cli.train import METHOD_NAMES
    from bt2_hf.methods import get_method_class

    for name in METHOD_NAMES:
        assert get_method_class(name) is not None
    import bt2_hf.methods as methods

    registered = set(getattr(methods, "_METHODS", {}) or getattr(methods, "METHODS", {}))
    assert not registered or registered == set(METHOD_NAMES)


CHECK_REGISTERED = (
    "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
    "from transformers.models.auto.modeling_auto import MODEL_MAPPING\n"
    "from bt2_hf.configuration_bt2 import BT2Config\n"
    "assert BT2Config.model_type in CONFIG_MAPPING and BT2Config in MODEL_MAPPING\n"
    "print('registered')"
)


@pytest.mark.parametrize(
    "first_import",
    [
        "import bt2_hf",  # then transformers: registered when it loads
        # each starts a fresh interpreter (~8 s on 2 busy cores): the inner loop keeps the first order only
        # transformers first: registered at once
        pytest.param("import transformers; import bt2_hf", marks=pytest.mark.slow),
        # transformers loads half-way through a bt2_hf import
        pytest.param("from bt2_hf.backbones import get_backbone_class", marks=pytest.mark.slow),
        pytest.param("from bt2_hf.modeling_bt2 import BT2Model", marks=pytest.mark.slow),
        pytest.param("from bt2_hf import BT2ImageProcessor", marks=pytest.mark.slow),
    ],
)
def test_auto_classes_know_bt2_hf_whatever_is_imported_first(first_import):
    assert _python(f"{first_import}\n{CHECK_REGISTERED}").strip() == "registered"
