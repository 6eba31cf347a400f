"""Where the files Envoy reads at start live (the top-level ``envoy/`` folder).

In a source checkout or editable install they are at ``<repo>/envoy``; a wheel carries them as
``xds_server/_envoy``.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def envoy_dir() -> Path:
    for candidate in (_HERE / "_envoy", _HERE.parent / "envoy"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("msm: cannot find the envoy/ assets folder next to xds_server/")


def envoy_asset(*parts: str) -> Path:
    return envoy_dir().joinpath(*parts)
