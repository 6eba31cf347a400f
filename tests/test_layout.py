"""The layout rules of docs/architecture.md hold for the tree as it is."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is a dev dependency (pip install -e '.[dev]')"
    r = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_placement_is_split_by_concern() -> None:
    top = sorted(p.name for p in (REPO / "placement").glob("*.py"))
    assert len(top) <= 5, f"placement/ has {len(top)} top-level modules: {top}"
    subpackages = {p.parent.name for p in (REPO / "placement").glob("*/__init__.py")}
    assert {"manifests", "sources", "engine", "control", "local", "adapters", "protos"} <= subpackages
