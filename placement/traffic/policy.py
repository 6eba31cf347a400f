"""Traffic policy as msm holds it: one host's rules, read from a VirtualService.

Plain frozen data with Istio's meanings; :mod:`placement.manifests.virtualservice` reads it from
documents, :mod:`placement.traffic.compose` turns it into the mesh view's routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xds_server.mesh_view import Fault, HeaderOps

#: gRPC status names (Istio's ``abort.grpcStatus``) and their codes
GRPC_STATUS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Exactly one of ``exact``, ``prefix``, ``regex`` (RE2, as Envoy reads it)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """One ``match`` entry: all its conditions hold (entries of a rule are alternatives)."""

    uri: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()


@dataclass(frozen=True, slots=True)
class RouteDestination:
    host: str  # a model (an InferenceService of the VirtualService's namespace)
    weight: int


@dataclass(frozen=True, slots=True)
class Mirror:
    host: str
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int
    per_try_timeout_s: float | None = None
    retry_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpRule:
    name: str
    matches: tuple[HttpMatch, ...]  # empty: every request
    route: tuple[RouteDestination, ...]
    mirrors: tuple[Mirror, ...] = ()
    fault: Fault | None = None
    retries: Retries | None = None
    timeout_s: float | None = None
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)

    def hosts(self) -> set[str]:
        """Every model the rule sends traffic (or a copy of it) to."""
        return {d.host for d in self.route} | {m.host for m in self.mirrors}


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """How requests for one model name are routed: the ``http`` rules of the VirtualService that
    holds the name (``source``, e.g. ``VirtualService default/canary``)."""

    host: str
    source: str
    rules: tuple[HttpRule, ...]
    sticky_header: str | None = None  # weighted splits keyed on this request header
