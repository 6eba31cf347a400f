"""The mesh view: everything the gateway must know to route, and nothing more.

Placement produces a ``MeshView``; translation turns it into Envoy resources. It is plain,
immutable data so that translation stays a pure function and can be tested without processes.

Names:
- a *model* is the name clients call (KServe's InferenceService name, ModelMesh's vModel);
- a *revision* is one concrete version of it, known to the runtime by ``Revision.id``
  (ModelMesh style ``<model>__isvc-<hash>``); the gateway rewrites the model name in the
  request (REST path, gRPC ``model_name`` field) to this id;
- a *copy* is a revision loaded and ready on one runtime instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xds_server.regex_check import regex_problem


@dataclass(frozen=True, slots=True)
class Copy:
    """A ready copy of a revision on one runtime instance."""

    instance: str  # unique instance id, e.g. "mlserver-0"
    address: str
    rest_port: int
    grpc_port: int
    mesh_tls: bool = False  # takes Istio mTLS (an injected sidecar): an Istio gateway uses it if it may


@dataclass(frozen=True, slots=True)
class Revision:
    """One revision of a model and its ready copies."""

    id: str  # the name the runtime serves it under
    runtime: str = "default"  # ServingRuntime name: copies of one runtime can share a cluster
    copies: tuple[Copy, ...] = ()
    # set when the routes of another model borrow this revision (a VirtualService sending one
    # model's traffic to another): the model that owns it, and its clusters
    model: str | None = None
    # the gateway reports each request it sends here (an automated rollout compares revisions)
    measured: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A request header condition; exactly one of exact / prefix / regex is set."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True)
class Destination:
    """A weighted destination: a share of a rule's traffic to one revision."""

    revision: str  # Revision.id
    weight: int = 100


@dataclass(frozen=True, slots=True)
class Fault:
    """Faults injected into a rule's requests (Istio ``HTTPFaultInjection``): percentages 0 to 100."""

    delay_s: float | None = None
    delay_percent: float = 100.0
    abort_http_status: int | None = None
    abort_grpc_status: int | None = None  # a gRPC status code (14 is UNAVAILABLE)
    abort_percent: float = 100.0


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """Header changes (Istio ``Headers.HeaderOperations``): names are lowercase."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class Mirror:
    """A copy of a share of a rule's requests, sent to another model (its answer is dropped)."""

    model: str  # a model of the view: the copy takes that model's own routing
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class RouteRule:
    """One http route of a model, VirtualService style: the first rule that matches wins.

    A header named ``:path`` matches the request's path (a VirtualService's ``uri``).
    """

    destinations: tuple[Destination, ...]
    headers: tuple[HeaderMatch, ...] = ()
    timeout_s: float | None = None  # None: gateway default
    retries: int | None = None  # None: gateway default
    per_try_timeout_s: float | None = None  # None: gateway default
    retry_on: str | None = None  # Envoy retry conditions; None: the gateway's
    fault: Fault | None = None
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    # a split keyed on this request header: one value always lands on the same destination
    sticky_header: str | None = None
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True, slots=True)
class Model:
    """A model as clients see it: its revisions and how traffic is split among them.

    With no rules, all traffic goes to ``revisions[0]`` (the active revision comes first).
    """

    name: str
    revisions: tuple[Revision, ...]
    rules: tuple[RouteRule, ...] = ()

    def revision(self, revision_id: str) -> Revision | None:
        for r in self.revisions:
            if r.id == revision_id:
                return r
        return None

    def own_revisions(self) -> tuple[Revision, ...]:
        """The revisions this model owns (not borrowed from another): the ones it has clusters for."""
        return tuple(r for r in self.revisions if r.model is None or r.model == self.name)

    def owner(self, revision: Revision) -> str:
        """The model whose clusters serve ``revision``."""
        return revision.model or self.name

    def effective_rules(self) -> tuple[RouteRule, ...]:
        if self.rules:
            return self.rules
        if not self.revisions:
            return ()
        return (RouteRule(destinations=(Destination(self.revisions[0].id, 100),)),)


@dataclass(frozen=True, slots=True)
class ActivatorEndpoint:
    """Where requests for a revision with no ready copy go: msm's load-on-demand endpoint.

    It triggers a load, waits for a ready copy, and replays the request through the gateway.
    """

    address: str
    rest_port: int
    grpc_port: int
    #: the secret the activator's direct replays carry (``names.REPLAY_TOKEN_HEADER``): only a
    #: request with it may name the copy it goes to. Empty: no direct replays (every replay waits
    #: until the routes send the revision to a copy).
    replay_token: str = ""


@dataclass(frozen=True, slots=True)
class MeasureEndpoint:
    """Where the gateway reports the requests of measured revisions: the xDS port of the control
    plane that decides rollouts (the leader, in Kubernetes mode; its access log service)."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class MeshView:
    """All models the gateway routes. Treat as immutable: a change is a new MeshView."""

    models: Mapping[str, Model] = field(default_factory=dict)
    activator: ActivatorEndpoint | None = None
    measure: MeasureEndpoint | None = None
    #: runtime -> every instance of it that is up (a Copy's fields: instance, address, ports), for
    #: the activator's direct replays: the runtime's direct cluster holds them all, so a copy just
    #: loaded anywhere is reachable at once. Only with an activator that has a replay token.
    runtime_instances: Mapping[str, tuple[Copy, ...]] = field(default_factory=dict)

    @staticmethod
    def of(models: list[Model] | tuple[Model, ...], activator: ActivatorEndpoint | None = None) -> MeshView:
        return MeshView({m.name: m for m in models}, activator)


def _header_name_ok(name: str) -> bool:
    return bool(name) and name == name.lower() and not name.startswith(":") and not any(
        c.isspace() for c in name)


def check_model(model: Model) -> list[str]:
    """What makes a model unroutable: the problems translation must never see.

    Producers (the placement file, the placement engine) call it so a bad split is reported
    where it was written and the last good view keeps serving.
    """
    problems: list[str] = []
    if not model.name or "/" in model.name or any(c.isspace() for c in model.name):
        problems.append(f"invalid model name {model.name!r} (no '/', no spaces)")
    if not model.revisions:
        problems.append("has no revision")
    ids = [r.id for r in model.revisions]
    if len(set(ids)) != len(ids):
        problems.append("revision ids must be unique")
    for r in model.revisions:
        if not r.id or "/" in r.id or any(c.isspace() for c in r.id):
            problems.append(f"invalid revision id {r.id!r}")
        instances = [c.instance for c in r.copies]
        if len(set(instances)) != len(instances):
            problems.append(f"revision {r.id} lists an instance twice")
        if r.model is not None and (not r.model or "/" in r.model or any(c.isspace() for c in r.model)):
            problems.append(f"revision {r.id}: invalid owner model {r.model!r}")
    known = set(ids)
    for i, rule in enumerate(model.rules):
        if not rule.destinations:
            problems.append(f"rule {i}: no destination")
        for d in rule.destinations:
            if d.revision not in known:
                problems.append(f"rule {i}: destination '{d.revision}' is not a revision of this model")
            if d.weight < 0:
                problems.append(f"rule {i}: negative weight for '{d.revision}'")
        if rule.destinations and sum(d.weight for d in rule.destinations) <= 0:
            problems.append(f"rule {i}: weights add up to 0")
        for h in rule.headers:
            if sum(x is not None for x in (h.exact, h.prefix, h.regex)) != 1:
                problems.append(f"rule {i}: header '{h.name}' needs exactly one of exact/prefix/regex")
            elif h.regex is not None and (why := regex_problem(h.regex)) is not None:
                problems.append(f"rule {i}: header '{h.name}' regex {h.regex[:100]!r}: {why}")
        if rule.retries is not None and rule.retries < 0:
            problems.append(f"rule {i}: negative retries")
        for what, value in (("timeout", rule.timeout_s), ("per-try timeout", rule.per_try_timeout_s)):
            if value is not None and value < 0:
                problems.append(f"rule {i}: negative {what}")
        f = rule.fault
        if f is not None:
            if f.delay_s is None and f.abort_http_status is None and f.abort_grpc_status is None:
                problems.append(f"rule {i}: a fault needs a delay or an abort")
            if f.abort_http_status is not None and f.abort_grpc_status is not None:
                problems.append(f"rule {i}: a fault aborts with an HTTP or a gRPC status, not both")
            if f.abort_http_status is not None and not 200 <= f.abort_http_status <= 599:
                problems.append(f"rule {i}: abort status {f.abort_http_status} is not an HTTP status")
            if f.abort_grpc_status is not None and not 0 <= f.abort_grpc_status <= 16:
                problems.append(f"rule {i}: abort status {f.abort_grpc_status} is not a gRPC status")
            if (f.delay_s or 0) < 0 or not all(0 <= p <= 100 for p in (f.delay_percent, f.abort_percent)):
                problems.append(f"rule {i}: a fault's delay is negative or a percentage is not 0 to 100")
        for m in rule.mirrors:
            if not m.model or "/" in m.model or any(c.isspace() for c in m.model):
                problems.append(f"rule {i}: invalid mirror model {m.model!r}")
            if not 0 <= m.percent <= 100:
                problems.append(f"rule {i}: mirror percentage {m.percent} is not 0 to 100")
        if rule.sticky_header is not None and not _header_name_ok(rule.sticky_header):
            problems.append(f"rule {i}: {rule.sticky_header!r} is not a header name to key a split on")
        for ops in (rule.request_headers, rule.response_headers):
            for name in (*(k for k, _ in ops.set), *(k for k, _ in ops.add), *ops.remove):
                if not _header_name_ok(name):
                    problems.append(f"rule {i}: {name!r} is not a header name msm may change")
    return problems
