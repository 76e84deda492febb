"""The Dockerfile's build-time asset check looks at the installed copy, all three asset sets.

No Docker daemon here: the check's own Python is taken from the Dockerfile and run twice, in an
install laid out as pyproject.toml's data-files say (it must pass, from /) and from the source
tree with the project's editable install (it must refuse, naming the source-tree paths).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _check_run() -> str:
    """The RUN instruction that installs the package and checks the assets, joined up."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    [run] = [line for line in text.splitlines()
             if line.startswith("RUN ") and "pip install ." in line]
    return run


def _check_code() -> str:
    match = re.search(r'python -P -c "([^"]+)"', _check_run())
    assert match is not None, "the asset check is not `python -P -c \"...\"`"
    return match[1]


def test_the_check_runs_outside_the_source_tree() -> None:
    steps = [step.strip() for step in _check_run()[len("RUN "):].split("&&")]
    assert steps[0] == "/opt/venv/bin/pip install ."
    assert steps[1] == "cd /"  # not WORKDIR /src, where the source tree would be found
    assert steps[2].startswith("/opt/venv/bin/python -P -c ")  # no current directory on sys.path


def test_the_check_names_all_three_asset_sets() -> None:
    code = _check_code()
    assert "asset_dir()" in code and "'ilm-policy.json'" in code  # elasticsearch/
    assert "'queries'" in code and "DEFAULT_SINCE" in code  # every query the reports read
    assert "saved_objects_path()" in code  # kibana/
    assert "ingest.__file__" in code  # and the package itself


def _installed_copy(base: Path) -> Path:
    """A venv holding the package and its data files where pip puts them; deps from ours."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base)], check=True,
                   timeout=120)
    python = base / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], check=True,
                               capture_output=True, text=True, timeout=60).stdout.strip())
    # Only the directory: the editable install's finder (.pth files in it) is not loaded.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.copytree(ROOT / "ingest", site / "ingest",
                    ignore=shutil.ignore_patterns("__pycache__"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for target, patterns in project["tool"]["setuptools"]["data-files"].items():
        (base / target).mkdir(parents=True, exist_ok=True)
        for pattern in patterns:
            for path in ROOT.glob(pattern):
                shutil.copy(path, base / target / path.name)
    return python


def test_the_check_passes_on_an_installed_copy(tmp_path: Path) -> None:
    python = _installed_copy(tmp_path / "venv")
    done = subprocess.run([str(python), "-P", "-c", _check_code()], cwd="/",
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    shown = done.stdout.split()
    assert shown[0] == "installed:" and len(shown) == 1 + 1 + 1 + 3 + 1
    assert all(path.startswith(str(tmp_path)) for path in shown[1:]), shown


def test_the_check_refuses_the_source_tree() -> None:
    # As the old check did from /src: the package and assets of the tree, not an install.
    done = subprocess.run([sys.executable, "-c", _check_code()], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "not in the installed copy" in done.stderr
    assert str(ROOT / "elasticsearch" / "ilm-policy.json") in done.stderr
    assert str(ROOT / "kibana" / "holysheep.ndjson") in done.stderr
