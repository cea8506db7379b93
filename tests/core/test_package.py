"""Package-level facts: one version source, no import cycles, recipe comments that agree with their settings."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from graphs import find_cycle

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import bt2_hf

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bt2_hf"
CLASSES = {"fashion_mnist": 10, "uoft-cs/cifar100": 100, "ILSVRC/imagenet-1k": 1000}


def test_the_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bt2_hf.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+)?", bt2_hf.__version__)
    readers = [
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "importlib.metadata" in path.read_text() or re.search(r"__version__\s*=", path.read_text())
    ]
    assert readers == ["bt2_hf/__init__.py"]


def _module_graph() -> dict[str, set[str]]:
    """bt2_hf module → the bt2_hf modules it imports, at any level (function-local imports included)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets |= {m for m in [module] + [f"{module}.{a.name}" for a in node.names] if m in modules}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = targets - {name}
    # A package's __init__ only re-exports: edges through it are not a module depending on another.
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    return {name: targets - packages for name, targets in graph.items() if name not in packages}


def test_modules_import_each_other_without_cycles():
    graph = _module_graph()
    assert {"bt2_hf.data.datasets", "bt2_hf.data.fashion_mnist"} <= graph.keys()
    assert "bt2_hf.data.classification_data" in graph["bt2_hf.data.fashion_mnist"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


@pytest.mark.parametrize("recipe", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("recipes/*/*.yaml")))
def test_recipe_data_comment_matches_its_settings(recipe):
    text = (ROOT / recipe).read_text()
    comment = re.search(r"^# Data: (.*)$", text, re.MULTILINE)
    if comment is None:
        pytest.skip("no data comment (accelerate config or series file)")
    settings = yaml.safe_load(text)
    subset = settings.get("class_subset")
    every = re.match(r"all (\d+) classes", comment.group(1))
    if every:
        assert subset is None
        assert int(every.group(1)) == CLASSES[settings["dataset"]]
    else:
        shown = re.search(r"(\d+-\d+)", comment.group(1))
        assert shown and shown.group(1) == subset
