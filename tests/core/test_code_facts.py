"""The size rule of docs/ARCHITECTURE.md, measured by the same tool that writes its numbers."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _code_facts():
    spec = importlib.util.spec_from_file_location("code_facts", ROOT / "tools" / "code_facts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_function_of_the_package_is_longer_than_150_lines():
    facts = _code_facts().measure()
    longest = facts["largest_functions"][0]
    assert facts["functions_over_150_lines"] == 0, f"{longest['function']} has {longest['lines']} lines"


def test_the_measure_counts_a_long_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(151))
    (package / "long.py").write_text(f'def long():\n    """Documented."""\n{body}\n\n\ndef _short():\n    return 1\n')
    facts = _code_facts().measure(package)
    assert facts["functions_over_150_lines"] == 1
    assert facts["largest_functions"][0] == {"lines": 153, "function": "pkg/long.py:long"}
    assert facts["public_definitions"] == 1 and facts["public_documented_fraction"] == 1.0
