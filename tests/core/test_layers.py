"""The package's layers, read from the source with `ast` (nothing is imported).

- no private name (``_x``) is imported from another package of bt2_hf;
- the model layer (model, config, heads, backbones, processor, compatibility, fingerprint) never imports from the
  layers built on it (hub, cli, experiments, training);
- bt2_hf's packages import each other without cycles when their modules load.

A "package" here is a subpackage of bt2_hf (``bt2_hf.data``) or a top-level module (``bt2_hf.heads``); the root
``bt2_hf/__init__.py`` and top-level modules together form the root for rule 1 (a top-level ``_x`` module such as
``_auto_registration`` belongs to the root).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from graphs import find_cycle

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bt2_hf"

MODEL_LAYER = (
    "bt2_hf.modeling_bt2",
    "bt2_hf.configuration_bt2",
    "bt2_hf.heads",
    "bt2_hf.backbones",
    "bt2_hf.processing",
    "bt2_hf.compatibility",
    "bt2_hf.fingerprint",
)
UPPER_LAYERS = ("bt2_hf.hub", "bt2_hf.cli", "bt2_hf.experiments", "bt2_hf.training")
# Upward imports the model layer may make, each deferred to a call and named here with its reason.
ALLOWED_UPWARD = {
    # BT2Model.push_to_hub is the transformers-style entry point; it imports the Hub code only when called.
    ("bt2_hf.modeling_bt2", "bt2_hf.hub.push"),
}


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module, dotted
    module: str  # the bt2_hf module imported from (absolute)
    name: str | None  # the name taken from it (``from module import name``), None for ``import module``
    at_load: bool  # runs when the importer loads (not inside a function, nor under ``if TYPE_CHECKING``)
    where: str  # path:line

    @property
    def target(self) -> str:
        """What is imported, dotted: ``module.name`` or ``module``."""
        return f"{self.module}.{self.name}" if self.name else self.module


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _statements(body: list[ast.stmt], at_load: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement under ``body``, with whether it runs when the module loads."""
    for node in body:
        yield node, at_load
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _statements(node.body, False)
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _statements(node.body, False)
            yield from _statements(node.orelse, at_load)
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _statements(getattr(node, field, None) or [], at_load)
        for handler in getattr(node, "handlers", None) or []:
            yield from _statements(handler.body, at_load)
        for case in getattr(node, "cases", None) or []:
            yield from _statements(case.body, at_load)


def _imports() -> list[Import]:
    """Every import of a bt2_hf module by a bt2_hf module, relative imports resolved."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        package = importer if path.name == "__init__.py" else importer.rsplit(".", 1)[0]
        where = path.relative_to(ROOT).as_posix()
        for node, at_load in _statements(ast.parse(path.read_text()).body, True):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    module = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if module == "bt2_hf" or module.startswith("bt2_hf."):
                    found += [Import(importer, module, a.name, at_load, f"{where}:{node.lineno}") for a in node.names]
            elif isinstance(node, ast.Import):
                found += [
                    Import(importer, a.name, None, at_load, f"{where}:{node.lineno}")
                    for a in node.names
                    if a.name == "bt2_hf" or a.name.startswith("bt2_hf.")
                ]
    return found


def _package(dotted: str) -> str:
    """The package of bt2_hf a dotted name belongs to: ``bt2_hf.data`` or a top-level module like ``bt2_hf.heads``."""
    return ".".join(dotted.split(".")[:2])


def _private_owner(dotted: str) -> str:
    """The package that owns a dotted name, for rule 1: a subpackage, or ``bt2_hf`` for the root and its modules."""
    head = dotted.split(".")[:2]
    return ".".join(head) if len(head) == 2 and (PACKAGE / head[1]).is_dir() else "bt2_hf"


def test_the_scan_sees_the_imports_it_checks():
    imports = _imports()
    assert len({i.importer for i in imports}) > 50
    # relative imports resolve; function-local ones are seen and not counted as load-time
    assert any(
        i.importer == "bt2_hf.galleries.sources" and i.target == "bt2_hf.data.fashion_mnist.IDX_FILES" for i in imports
    )
    assert any(
        i.importer == "bt2_hf.modeling_bt2" and i.module == "bt2_hf.hub.push" and not i.at_load for i in imports
    )
    assert (
        _package("bt2_hf.data.datasets.load_hf_split") == "bt2_hf.data" and _package("bt2_hf.heads") == "bt2_hf.heads"
    )
    assert _private_owner("bt2_hf._auto_registration") == "bt2_hf" == _private_owner("bt2_hf.adapters.paired_rows")


def test_no_private_name_is_imported_across_packages():
    offenders = [
        f"{i.where}: {i.importer} imports {i.target}"
        for i in _imports()
        if any(part.startswith("_") and not part.startswith("__") for part in i.target.split(".")[1:])
        and _private_owner(i.target) != _private_owner(i.importer)
    ]
    assert offenders == [], "make the name public in its module, or move it to the package that uses it"


def test_the_model_layer_never_imports_from_the_layers_above_it():
    upward = {
        (i.importer, i.module, i.where, i.at_load)
        for i in _imports()
        if i.importer.startswith(MODEL_LAYER) and i.target.startswith(UPPER_LAYERS)
    }
    unexpected = sorted(u for u in upward if (u[0], u[1]) not in ALLOWED_UPWARD or u[3])
    assert unexpected == [], "the model layer imports upward (importer, module, where, at load)"
    allowed_still_used = {(importer, module) for importer, module, _, _ in upward}
    assert allowed_still_used == ALLOWED_UPWARD, "an allowed upward import is gone: remove it from ALLOWED_UPWARD"


def test_packages_import_each_other_without_cycles_when_they_load():
    graph: dict[str, set[str]] = {}
    for i in _imports():
        if i.at_load and _package(i.importer) != _package(i.target):
            graph.setdefault(_package(i.importer), set()).add(_package(i.target))
    assert "bt2_hf.modeling_bt2" in graph["bt2_hf.training"]
    cycle = find_cycle(graph)
    assert cycle is None, "package import cycle: " + " → ".join(cycle or [])


def test_the_cycle_search_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
