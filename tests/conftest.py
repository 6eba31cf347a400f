"""Suite-wide rule: no silent skips.

With ``MSM_STRICT_SKIPS=1`` (set by ``.ci/run``) a skipped test fails, unless its node id starts
with an entry of ``tests/allowed_skips.txt`` (one ``node-id-prefix  # why`` per line). Outside
CI a skip stays a skip, and ``-ra`` prints its reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

STRICT_ENV = "MSM_STRICT_SKIPS"
ALLOWED_FILE = Path(__file__).with_name("allowed_skips.txt")


def allowed_skips(path: Path = ALLOWED_FILE) -> list[str]:
    """Node-id prefixes that may skip in CI; every entry must say why after a ``#``."""
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        prefix, _, why = line.partition("#")
        if not why.strip():
            raise pytest.UsageError(f"{path}:{n}: an allowed skip needs its reason after '#'")
        out.append(prefix.strip())
    return out


def strict_skip_failure(nodeid: str, reason: str, allowed: list[str]) -> str | None:
    """The failure text for a skip that CI does not allow, or None when it is allowed."""
    if any(nodeid.startswith(p) for p in allowed):
        return None
    return (f"skipped in CI ({STRICT_ENV}=1): {reason}\n"
            f"A skip is an error here unless {ALLOWED_FILE.name} lists it with its reason.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or hasattr(rep, "wasxfail") or os.environ.get(STRICT_ENV) != "1":
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    failure = strict_skip_failure(rep.nodeid, reason, allowed_skips())
    if failure is not None:
        rep.outcome = "failed"
        rep.longrepr = failure
