"""Bounds on what a manifest may cost msm before it is even validated, and bounded messages.

A manifest is untrusted input. A 1 KB YAML "alias bomb" (anchors that refer to anchors)
expands to billions of nodes the moment anything walks it; a 3 GB file is read into memory; a
5000-digit integer makes the YAML loader raise; one value printed whole in an error message can
be megabytes. So, before parsing for real:

- a file is at most :data:`MAX_MANIFEST_BYTES` (Kubernetes itself stores objects of up to about
  1.5 MiB);
- its YAML, with every alias expanded, is at most :data:`MAX_NODES` nodes and
  :data:`MAX_DEPTH` levels deep; this is counted on the parser's event stream, so an alias bomb
  costs as much to refuse as its text is long;

and every value a message quotes goes through :func:`shown`, which is bounded in work and size.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

import yaml

MAX_MANIFEST_BYTES = 2 * 1024 * 1024
#: One problem's message is at most this long (it names the file, the object and the field first).
MAX_MESSAGE_CHARS = 2000
MAX_NODES = 200_000
MAX_DEPTH = 64

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxdict = _repr.maxlist = _repr.maxtuple = _repr.maxset = 4
_repr.maxstring = 300  # a valid name is at most 253 characters: shown whole
_repr.maxlong = 40
_repr.maxother = 100


def shown(value: Any) -> str:
    """``repr(value)`` cut to a readable size, with bounded work (never expands a whole structure)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    return _repr.repr(value)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(message: str) -> str:
    """A problem's message as one line of bounded length: control characters (a newline in a name
    or a key, say) are shown escaped, and the message is cut at :data:`MAX_MESSAGE_CHARS`."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)
    if len(text) > MAX_MESSAGE_CHARS:
        text = f"{text[:MAX_MESSAGE_CHARS]}… ({len(text):,} characters in all)"
    return text


def size_problem(size: int) -> str | None:
    if size > MAX_MANIFEST_BYTES:
        return (f"is {size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} msm reads in one manifest "
                "file; not read")
    return None


def structure_problem(text: str) -> str | None:
    """Why ``text`` is too costly to load (aliases expanded, nesting), or None.

    YAML syntax errors are left for the real parse to report, with their line and column.
    """
    anchors: dict[str, int] = {}  # anchor -> expanded nodes of what it names
    stack: list[list[Any]] = []  # open collections: [expanded nodes so far, anchor]
    total = 0
    try:
        for ev in yaml.parse(text, Loader=_LOADER):
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                stack.append([1, ev.anchor])
                if len(stack) > MAX_DEPTH:
                    return f"nests more than {MAX_DEPTH} levels deep; not read"
                continue
            if isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                n, anchor = stack.pop()
            elif isinstance(ev, yaml.ScalarEvent):
                n, anchor = 1, ev.anchor
            elif isinstance(ev, yaml.AliasEvent):
                n, anchor = anchors.get(ev.anchor, 1), None
            else:
                continue
            if anchor is not None:
                anchors[anchor] = n
            if stack:
                stack[-1][0] += n
            else:
                total += n
            if total > MAX_NODES or (stack and stack[-1][0] > MAX_NODES):
                return (f"expands to more than {MAX_NODES:,} YAML nodes (aliases counted where they are "
                        "used); not read")
    except yaml.YAMLError:
        return None
    return None
