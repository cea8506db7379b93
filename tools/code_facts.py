"""Facts about the package measured from its code: size, the largest functions, docstring coverage.

    python tools/code_facts.py            # a table
    python tools/code_facts.py --json     # the same as JSON

docs/ARCHITECTURE.md quotes its output; the import rules (cycles, private names, layer arrows) are tests
(tests/core/test_layers.py).
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bt2_hf"


def measure(package: Path = PACKAGE, top: int = 8) -> dict:
    functions, public, documented, files, lines = [], 0, 0, 0, 0
    for path in sorted(package.rglob("*.py")):
        source = path.read_text()
        files += 1
        lines += len(source.splitlines())
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(package.parent)}:{node.name}"
                functions.append((node.end_lineno - node.lineno + 1, name))
        for node in tree.body:  # module-level public definitions (and public methods of public classes)
            nodes = [node]
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                nodes += [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for item in nodes:
                if isinstance(
                    item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                ) and not item.name.startswith("_"):
                    public += 1
                    documented += ast.get_docstring(item) is not None
    functions.sort(reverse=True)
    return {
        "files": files,
        "lines": lines,
        "functions": len(functions),
        "largest_functions": [{"lines": n, "function": name} for n, name in functions[:top]],
        "functions_over_150_lines": sum(1 for n, _ in functions if n > 150),
        "public_definitions": public,
        "public_documented_fraction": round(documented / max(public, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    facts = measure()
    if parser.parse_args().json:
        print(json.dumps(facts, indent=2))
        return
    print(f"{facts['files']} files, {facts['lines']} lines, {facts['functions']} functions")
    print(f"functions over 150 lines: {facts['functions_over_150_lines']}")
    print(
        f"public definitions with a docstring: {facts['public_documented_fraction']:.0%} of {facts['public_definitions']}"
    )
    print("largest functions:")
    for item in facts["largest_functions"]:
        print(f"  {item['lines']:4d}  {item['function']}")


if __name__ == "__main__":
    main()
