"""The no-silent-skips rule of tests/conftest.py, run on a throwaway suite."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SUITE = '''
import pytest


def test_runs():
    pass

def test_skips():
    pytest.skip("no such tool here")

@pytest.mark.xfail(reason="known")
def test_xfails():
    assert False
'''


def run_suite(tmp_path: Path, strict: bool, allowed: str = "") -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "allowed_skips.txt").write_text(allowed)
    (tmp_path / "test_some.py").write_text(SUITE)
    env = {"PATH": "/usr/bin:/bin", **({"MSM_STRICT_SKIPS": "1"} if strict else {})}
    cmd = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", str(tmp_path)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)


def test_a_skip_is_a_skip_outside_ci(tmp_path: Path) -> None:
    r = run_suite(tmp_path, strict=False)
    assert r.returncode == 0, r.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in r.stdout


def test_a_skip_fails_in_ci_with_its_reason(tmp_path: Path) -> None:
    r = run_suite(tmp_path, strict=True)
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 passed, 1 xfailed" in r.stdout
    assert "skipped in CI (MSM_STRICT_SKIPS=1): Skipped: no such tool here" in r.stdout


def test_a_listed_skip_is_allowed_in_ci(tmp_path: Path) -> None:
    r = run_suite(tmp_path, strict=True, allowed="test_some.py::test_skips  # the tool is optional\n")
    assert r.returncode == 0, r.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in r.stdout


def test_an_allowed_skip_without_a_reason_is_refused(tmp_path: Path) -> None:
    r = run_suite(tmp_path, strict=True, allowed="test_some.py::test_skips\n")
    assert r.returncode != 0
    assert "an allowed skip needs its reason after '#'" in r.stdout + r.stderr


def test_entries_are_node_id_prefixes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("suite_rules", REPO / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    f = tmp_path / "allowed.txt"
    f.write_text("# a comment\n\ntests/x.py::t  # why\n")
    allowed, strict_skip_failure = rules.allowed_skips(f), rules.strict_skip_failure
    assert allowed == ["tests/x.py::t"]
    assert strict_skip_failure("tests/x.py::t[a]", "r", allowed) is None
    assert strict_skip_failure("tests/y.py::t", "r", allowed) is not None
