"""What the gateway measured: Envoy's gRPC access log service, for the routes that ask for it.

Routes of revisions in an automated rollout carry ``msm.measure`` metadata; the gateway's access
log (``translate/listeners.py``: a CEL filter on that metadata) streams one entry per such
request to this service, on msm's xDS port, with the gateway's token. Each entry becomes a
:class:`Measurement` of a revision: failed or not, and how long the client waited. Other routes
cost nothing: Envoy never builds their entries.

A request *failed* when the gateway answered 5xx (or could not answer at all), or a gRPC status
that is the server's doing (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
DATA_LOSS); a client's own mistake (4xx, INVALID_ARGUMENT, NOT_FOUND …) is no revision's fault.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from envoy.data.accesslog.v3 import accesslog_pb2

from xds_server.translate.names import revision_of_route

log = logging.getLogger("msm.access_log")

ALS_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
#: gRPC statuses that count against the revision that answered
SERVER_GRPC_FAILURES = frozenset({2, 4, 12, 13, 14, 15})
MAX_ENTRIES_PER_MESSAGE = 10_000  # a bigger batch is read in part: a client cannot make msm spin


@dataclass(frozen=True, slots=True)
class Measurement:
    revision: str
    failed: bool
    latency_s: float


OnMeasurements = Callable[[list[Measurement]], None]


def _grpc_status(entry: accesslog_pb2.HTTPAccessLogEntry) -> int | None:
    r = entry.response
    value = r.response_trailers.get("grpc-status") or r.response_headers.get("grpc-status")
    return int(value) if value is not None and value.isdigit() else None


def measurement(entry: accesslog_pb2.HTTPAccessLogEntry) -> Measurement | None:
    """The measurement an entry reports, or None when it is not of a revision's route."""
    common = entry.common_properties
    revision = revision_of_route(common.route_name)
    if revision is None:
        return None
    code = entry.response.response_code.value if entry.response.HasField("response_code") else 0
    status = _grpc_status(entry)
    failed = code == 0 or code >= 500 or (status is not None and status in SERVER_GRPC_FAILURES)
    if common.HasField("duration"):
        latency = common.duration.ToTimedelta().total_seconds()
    else:
        latency = common.time_to_last_downstream_tx_byte.ToTimedelta().total_seconds()
    return Measurement(revision, failed, max(0.0, latency))


def measurements(entries, limit: int = MAX_ENTRIES_PER_MESSAGE) -> list[Measurement]:
    out = []
    for entry in entries[:limit]:
        m = measurement(entry)
        if m is not None:
            out.append(m)
    return out
