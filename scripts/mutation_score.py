#!/usr/bin/env python3
"""Per-module score of the last ``mutmut run`` (``make mutate``), from ``mutants/**/*.meta``.

A mutant counts as caught when a test failed (killed) or hung (timeout); the score is caught out
of the mutants that were checked. ``--markdown`` prints the table docs/testing.md carries.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit-code meanings (mutmut/stats.py)
_STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
           36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
           37: "type check", -9: "segfault", -11: "segfault", None: "not checked"}


def scores(root: Path) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if not codes:
            continue
        module = str(meta.relative_to(root))[: -len(".meta")]
        out[module] = Counter(_STATUS.get(c, "suspicious") for c in codes.values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mutants", default="mutants", help="mutmut's work folder (default: mutants)")
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args(argv)
    table = scores(Path(a.mutants))
    if not table:
        print(f"no mutmut results under {a.mutants}/ (run `make mutate` first)", file=sys.stderr)
        return 1
    head = ("module", "mutants", "killed", "timeout", "survived", "no tests", "score")
    rows = []
    total: Counter[str] = Counter()
    for module, c in table.items():
        total.update(c)
        rows.append((module, c))
    rows.append(("all", total))
    lines = []
    for module, c in rows:
        n = sum(c.values())
        checked = n - c["not checked"]
        caught = c["killed"] + c["timeout"] + c["type check"]
        score = f"{100 * caught / checked:.0f} %" if checked else "-"
        lines.append((module, str(n), str(c["killed"]), str(c["timeout"]), str(c["survived"]),
                      str(c["no tests"]), score))
    if a.markdown:
        print("| " + " | ".join(head) + " |")
        print("| --- |" + " ---: |" * (len(head) - 1))
        for row in lines:
            name = "**all**" if row[0] == "all" else f"`{row[0]}`"
            print("| " + " | ".join((name, *row[1:])) + " |")
    else:
        width = max(len(r[0]) for r in lines)
        print(f"{head[0]:<{width}}  " + "  ".join(f"{h:>8}" for h in head[1:]))
        for row in lines:
            print(f"{row[0]:<{width}}  " + "  ".join(f"{v:>8}" for v in row[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
