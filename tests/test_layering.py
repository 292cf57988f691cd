"""What may import what: the benefactor shares the data path with clients through the core
(memstage.transport, memstage.stripes, memstage.peers), never through the client package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "memstage"


def imported(path: Path) -> list[str]:
    """The absolute module names a source file imports, wherever in it (functions included)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


def test_the_benefactor_does_not_import_the_client_package():
    sources = sorted((PACKAGE / "benefactor").rglob("*.py"))
    assert sources
    offending = [f"{p.relative_to(PACKAGE)}: {name}" for p in sources for name in imported(p)
                 if name == "memstage.client" or name.startswith("memstage.client.")]
    assert not offending, offending


def test_the_scan_sees_an_import_of_the_client(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from memstage import client\n    import memstage.client.connections\n")
    assert "memstage.client" in imported(sample) and "memstage.client.connections" in imported(sample)
