"""Type-checks generated TypeScript against the official definitions installed under .ci/spec.

`.ci/run` installs them from the npm registry (`npm ci --prefix .ci/spec`): the Elasticsearch
JavaScript client's API types (generated from elastic/elasticsearch-specification), Grafana's
dashboard schema types and TypeScript itself. A test writes small `.ts` files that assign each of
our JSON bodies to its official type and runs `tsc --noEmit --strict` over them once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / ".ci" / "spec"
MODULES = SPEC / "node_modules"
INSTALL = "npm ci --prefix .ci/spec"
_DIAGNOSTIC = re.compile(r"^(?P<file>.+?)\((?P<line>\d+),(?P<col>\d+)\): error (?P<code>TS\d+): "
                         r"(?P<message>.*)$")


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        message = self.message if len(self.message) < 400 else self.message[:400] + " ..."
        return f"{self.file}:{self.line}: {self.code} {message}"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing: .ci/run installs it ({INSTALL})")
    pytest.skip(f"{what} not installed ({INSTALL}); CI installs it")


def installed(package: str) -> Path:
    """The installed package's directory (skip, or fail in CI, when it is not there)."""
    if shutil.which("node") is None:
        _missing("node")
    found = MODULES / package
    if not (found / "package.json").is_file():
        _missing(f"the npm package {package}")
    return found


def version(package: str) -> str:
    found: str = json.loads((installed(package) / "package.json").read_text())["version"]
    return found


def module(package: str, path: str) -> str:
    """An import specifier for a declaration file inside an installed package, by absolute path:
    the generated files live in a temporary directory, outside any node_modules tree."""
    target = installed(package) / path
    assert target.with_name(target.name + ".d.ts").is_file() or \
        target.with_suffix(".d.ts").is_file(), f"{target} has no declarations"
    return str(target)


def literal(value: Any) -> str:
    """A JSON value as a TypeScript expression (JSON is one)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def typecheck(files: dict[str, str], workdir: Path) -> list[Diagnostic]:
    """Write `files` (name -> source) into `workdir`, run tsc once, return its errors."""
    tsc = installed("typescript") / "bin" / "tsc"
    for name, source in files.items():
        (workdir / name).write_text(source)
    config = {"compilerOptions": {
        "strict": True, "noEmit": True, "skipLibCheck": True, "target": "ES2022",
        "module": "ESNext", "moduleResolution": "Bundler", "types": [], "lib": ["ES2022"],
        "noErrorTruncation": True}, "files": sorted(files)}
    (workdir / "tsconfig.json").write_text(json.dumps(config))
    done = subprocess.run(["node", str(tsc), "--noEmit", "--strict", "--pretty", "false", "-p",
                           str(workdir / "tsconfig.json")], cwd=workdir, capture_output=True,
                          text=True, timeout=300, check=False)
    found: list[Diagnostic] = []
    for line in done.stdout.splitlines():
        match = _DIAGNOSTIC.match(line)
        if match:
            found.append(Diagnostic(Path(match["file"]).name, int(match["line"]),
                                    match["code"], match["message"]))
        elif found and line.startswith(" "):
            last = found[-1]
            found[-1] = Diagnostic(last.file, last.line, last.code,
                                   f"{last.message} {line.strip()}")
        elif line.strip():
            pytest.fail(f"tsc said something this reader does not know: {line}")
    if done.returncode not in (0, 1, 2) or (done.returncode and not found):
        pytest.fail(f"tsc failed ({done.returncode}): {done.stdout}{done.stderr}")
    return found
