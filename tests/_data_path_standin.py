"""A stand-in for xds_server/translate/data_path.py, used only while that module is missing."""

from __future__ import annotations

import sys
import types
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import any_pb2

REST_BODY_HEADER = "x-msm-body"
REST_BODY_DATA = "data"


def _router() -> hcm.HttpFilter:
    a = any_pb2.Any()
    a.Pack(router_pb2.Router())
    return hcm.HttpFilter(name="envoy.filters.http.router", typed_config=a)


def rest_http_filters(opts: Any) -> list[hcm.HttpFilter]:
    return [_router()]


def grpc_http_filters(opts: Any) -> list[hcm.HttpFilter]:
    return [_router()]


def route_target_metadata(revision_id: str) -> base_pb2.Metadata:
    m = base_pb2.Metadata()
    m.filter_metadata["msm"].update({"target": revision_id})
    return m


def transcoding_per_route(enabled: bool) -> dict[str, Any]:
    return {}


def install() -> bool:
    """Make ``xds_server.translate.data_path`` importable; True if the stand-in was used."""
    try:
        import xds_server.translate.data_path  # noqa: F401
        return False
    except ImportError:
        mod = types.ModuleType("xds_server.translate.data_path")
        for k in ("REST_BODY_HEADER", "REST_BODY_DATA", "rest_http_filters", "grpc_http_filters",
                  "route_target_metadata", "transcoding_per_route"):
            setattr(mod, k, globals()[k])
        sys.modules["xds_server.translate.data_path"] = mod
        import xds_server.translate as pkg
        pkg.data_path = mod  # type: ignore[attr-defined]
        return True
