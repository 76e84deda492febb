"""The house rules of the package, read from its imports: each external system behind one
module, the store on the ground floor, and no test tool inside the product."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ingest"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", "."): path
           for path in sorted(PACKAGE.rglob("*.py"))}


def _importers(*roots: str) -> list[str]:
    return sorted(name for name, path in MODULES.items()
                  if any(m == root or m.startswith(root + ".") for m in _imports(path)
                         for root in roots))


@pytest.mark.parametrize(("roots", "only"), [
    (("elasticsearch", "elastic_transport"), ["ingest.elastic"]),
    (("prometheus_client",), ["ingest.metrics"]),
])
def test_each_external_system_is_behind_one_module(roots: tuple[str, ...],
                                                   only: list[str]) -> None:
    assert _importers(*roots) == only


def test_only_the_store_imports_sqlite3() -> None:
    assert all(name.startswith("ingest.store.") for name in _importers("sqlite3"))


def test_the_store_imports_nothing_above_records_and_errors() -> None:
    allowed = ("ingest.store", "ingest.records", "ingest.errors")
    upward = {name: sorted(m for m in _imports(path) if m.startswith("ingest")
                           and not any(m == a or m.startswith(a + ".") for a in allowed))
              for name, path in MODULES.items() if name.startswith("ingest.store")}
    assert {name: found for name, found in upward.items() if found} == {}


def test_no_test_tool_is_part_of_the_product() -> None:
    # The fault-injection bulk server and the process helpers live in tests/support.
    assert _importers("faults", "receiver", "pytest") == []
    assert not any("FaultBulkServer" in path.read_text() for path in MODULES.values())


def test_logstash_and_the_test_helpers_do_not_load_the_elasticsearch_client() -> None:
    code = ("import sys; import ingest.app, ingest.ship.logstash, ingest.testing; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('elasticsearch', 'elastic_transport')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
