"""Would Envoy accept this regular expression? RE2's own parser and Envoy's program-size limit.

Envoy compiles every ``safe_regex`` with Google RE2 and refuses a configuration whose regex RE2
cannot parse (lookarounds, backreferences) or whose compiled program is bigger than
``re2.max_program_size.error_level`` (100 by default; ``a{1,100}`` is 203). One refused regex
NACKs the whole route configuration it is in, so msm checks with the same library first and
names the regex.
"""

from __future__ import annotations

from functools import lru_cache

import re2

#: Envoy's default ``re2.max_program_size.error_level``.
ENVOY_MAX_PROGRAM_SIZE = 100
MAX_REGEX_LENGTH = 4096

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the error comes back as the exception; nothing on stderr


@lru_cache(maxsize=4096)
def regex_problem(pattern: str) -> str | None:
    """Why Envoy would refuse ``pattern``, or None if it would accept it."""
    if len(pattern) > MAX_REGEX_LENGTH:
        return f"longer than {MAX_REGEX_LENGTH} characters"
    try:
        size = re2.compile(pattern, _OPTIONS).programsize
    except re2.error as e:
        text = e.args[0] if e.args else str(e)
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        return f"not an RE2 regular expression (Envoy's engine): {text}"
    if size > ENVOY_MAX_PROGRAM_SIZE:
        return (f"too complex for Envoy: its RE2 program size is {size}, over Envoy's limit of "
                f"{ENVOY_MAX_PROGRAM_SIZE} (re2.max_program_size.error_level); simplify it, e.g. "
                "fewer or smaller repetition counts")
    return None
