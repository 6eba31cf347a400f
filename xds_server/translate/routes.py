"""Routes keyed on the model name (RDS, flat or Scoped RDS), splits by ``runtime_fraction``.

A split is one route per destination. Envoy evaluates every route of a request against the same
per-request random value, so route *i* carrying the cumulative share ``w_1 + … + w_i`` (out of a
million) matches exactly a ``w_i`` share of the requests that reach the split; the last route
has no fraction and takes the rest. Unlike ``weighted_clusters``, each destination keeps its own
path rewrite and metadata, which is what sends a request to the runtime under the revision's id.

Before a split's routes, a *pinned* route per destination with a ready copy takes the activator's
replay of a cold request (``x-msm-activated`` and ``x-msm-revision``) to the revision it was first
routed to, so the replay does not throw the dice again.

Before those, a *direct* route per destination with no ready copy (an activator with a replay
token) takes the activator's *direct* replay: the secret token and the address of the copy whose
load just returned, which Envoy's stateful session filter picks in the runtime's direct cluster
(every instance of the runtime). The replay then needs neither a new view nor the gateway's ACK
of it.

A *sticky* split (``RouteRule.sticky_header``) has, before its fraction routes, one route per
destination matching a range of ``x-msm-bucket`` (0..9999, the destinations' cumulative shares).
The fraction routes and these turn on the sticky Lua filter, which hashes the key header's value
into that bucket and has the route looked up again: one key, one destination, on every gateway.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2, range_pb2
from google.protobuf import wrappers_pb2

from xds_server.mesh_view import Fault, HeaderMatch, HeaderOps, MeshView, Mirror, Model, RouteRule
from xds_server.translate import data_path, names
from xds_server.translate.common import duration, pack
from xds_server.translate.options import GatewayOptions

MILLION = 1_000_000
BUCKETS = 10_000  # a sticky split's buckets: envoy/lua/sticky_bucket.lua hashes into 0..BUCKETS-1
# "cancelled": a runtime shutting down (pod terminating, grpc server stop) cancels its in-flight RPCs
RETRY_ON = "reset,connect-failure,refused-stream,unavailable,cancelled"
_PREVIOUS_HOSTS = rc.RetryPolicy.RetryHostPredicate(
    name="envoy.retry_host_predicates.previous_hosts",
    typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one destination of a rule goes."""

    revision: str
    kind: str  # "runtime", "activator" or "unavailable"
    runtime: str = ""
    model: str = ""  # the model that owns the revision (its clusters; what the activator loads)
    measured: bool = False  # the gateway reports its requests (Revision.measured)


def _targets(model: Model, rule: RouteRule, view: MeshView) -> list[tuple[Target, int]]:
    """The rule's destinations with their weights, resolved to runtime / activator / unavailable.

    Without an activator, a destination with no ready copy gives its share to the destinations
    that have one; if none has, the rule answers 503.
    """
    out: list[tuple[Target, int]] = []
    for d in rule.destinations:
        rev = model.revision(d.revision)
        if rev is None or d.weight <= 0:
            continue
        if rev.copies:
            out.append((Target(rev.id, "runtime", rev.runtime, model.owner(rev), rev.measured), d.weight))
        elif view.activator is not None:
            out.append((Target(rev.id, "activator", rev.runtime, model.owner(rev), rev.measured), d.weight))
        else:
            out.append((Target(rev.id, "unavailable"), d.weight))
    live = [(t, w) for t, w in out if t.kind != "unavailable"]
    if live:
        return live
    return out[:1] or [(Target("", "unavailable"), 1)]


def split_fractions(weights: list[int]) -> list[int | None]:
    """Cumulative numerators (per million) for a split; the last destination gets ``None``."""
    total = sum(weights)
    out: list[int | None] = []
    acc = 0
    for w in weights[:-1]:
        acc += w
        out.append(round(acc * MILLION / total))
    out.append(None)
    return out


def sticky_bucket(value: str) -> int:
    """The bucket envoy/lua/sticky_bucket.lua puts a key in: 32-bit FNV-1a of its bytes, mod BUCKETS."""
    h = 2166136261
    for b in value.encode():
        h = ((h ^ b) * 16777619) % 2**32
    return h % BUCKETS


def bucket_ranges(weights: list[int]) -> list[tuple[int, int]]:
    """Each destination's buckets ``[start, end)`` of a sticky split, in order, by cumulative share."""
    total = sum(weights)
    out, acc, start = [], 0, 0
    for w in weights:
        acc += w
        end = round(acc * BUCKETS / total)
        out.append((start, end))
        start = end
    return out


def _header(h: HeaderMatch) -> rc.HeaderMatcher:
    if h.exact is not None:
        sm = string_pb2.StringMatcher(exact=h.exact)
    elif h.prefix is not None:
        sm = string_pb2.StringMatcher(prefix=h.prefix)
    else:
        sm = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=h.regex or ""))
    return rc.HeaderMatcher(name=h.name, string_match=sm)


def _exact(name: str, value: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))


def _fallback_priority(retries: int) -> rc.RetryPolicy.RetryPriority:
    """Retries leave the copies' priority for the activator's after two attempts on copies (one
    when only one retry is allowed): a second copy gets its chance first (previous_hosts), and a
    request whose single copy is gone goes to the activator on its third attempt."""
    every = 2 if retries >= 2 else 1
    return rc.RetryPolicy.RetryPriority(
        name="envoy.retry_priorities.previous_priorities",
        typed_config=pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=every)))


def _retry(rule: RouteRule, opts: GatewayOptions, fallback: bool) -> rc.RetryPolicy:
    retries = opts.retries if rule.retries is None else rule.retries
    p = rc.RetryPolicy(
        retry_on=rule.retry_on or RETRY_ON,
        num_retries=wrappers_pb2.UInt32Value(value=retries),
        retry_host_predicate=[_PREVIOUS_HOSTS],
        host_selection_retry_max_attempts=5,
    )
    if fallback and retries > 0:
        p.retry_priority.CopyFrom(_fallback_priority(retries))
    per_try = opts.per_try_timeout_s if rule.per_try_timeout_s is None else rule.per_try_timeout_s
    if per_try:
        p.per_try_timeout.CopyFrom(duration(per_try))
    return p


def _percent(p: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(numerator=round(p * 10_000),
                                         denominator=percent_pb2.FractionalPercent.MILLION)


def fault_config(f: Fault) -> fault_pb2.HTTPFault:
    """A rule's fault as the per-route config of Envoy's fault filter."""
    cfg = fault_pb2.HTTPFault()
    if f.delay_s is not None:
        cfg.delay.CopyFrom(common_fault_pb2.FaultDelay(fixed_delay=duration(f.delay_s),
                                                       percentage=_percent(f.delay_percent)))
    if f.abort_http_status is not None:
        cfg.abort.CopyFrom(fault_pb2.FaultAbort(http_status=f.abort_http_status,
                                                percentage=_percent(f.abort_percent)))
    elif f.abort_grpc_status is not None:
        cfg.abort.CopyFrom(fault_pb2.FaultAbort(grpc_status=f.abort_grpc_status,
                                                percentage=_percent(f.abort_percent)))
    return cfg


def _mirror_policy(m: Mirror, grpc: bool) -> rc.RouteAction.RequestMirrorPolicy:
    """Shadow a share of the requests to the internal mirror listener, naming the model that takes them."""
    p = rc.RouteAction.RequestMirrorPolicy(cluster=names.mirror_cluster(names.GRPC if grpc else names.REST),
                                           disable_shadow_host_suffix_append=True)
    if m.percent < 100:
        p.runtime_fraction.CopyFrom(base_pb2.RuntimeFractionalPercent(
            default_value=_percent(m.percent), runtime_key="msm.mirror.unset"))
    p.request_headers_mutations.append(mutation_rules_pb2.HeaderMutation(append=base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=names.MIRROR_HEADER, value=m.model),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)))
    return p


def mirror_targets(model: Model) -> frozenset[str]:
    """The models ``model``'s rules mirror to."""
    return frozenset(m.model for rule in model.rules for m in rule.mirrors)


def _mirror_route(model: Model, kind: str, target: Target, frac: int | None,
                  opts: GatewayOptions) -> rc.Route:
    r = rc.Route(name=f"mirror/{model.name}/{kind}/{target.revision}")
    r.match.prefix = f"/{data_path.INFERENCE_SERVICE}/" if kind == names.GRPC else "/v2/models/"
    r.match.headers.append(_exact(names.MIRROR_HEADER, model.name))
    _fraction(frac, r)
    if target.kind != "runtime":
        # a shadow is never worth a load on the client's time: it is dropped, and the controller
        # has the model loaded (placement/control/controller.py)
        r.direct_response.CopyFrom(_unavailable(model, target))
        return r
    a = r.route
    a.cluster = names.cluster_for(kind, target.model, target.revision, target.runtime, opts)
    if opts.cluster_layout == "subset":
        subset = a.metadata_match.filter_metadata[names.LB_METADATA].fields[names.SUBSET_KEY]
        subset.string_value = target.revision
    if kind == names.GRPC:
        r.metadata.CopyFrom(data_path.route_target_metadata(target.revision))
    else:  # the shadow's path names the revision the primary went to
        a.regex_rewrite.CopyFrom(regex_pb2.RegexMatchAndSubstitute(
            pattern=regex_pb2.RegexMatcher(regex="^/v2/models/[^/]+"),
            substitution=f"/v2/models/{target.revision}"))
    a.timeout.CopyFrom(duration(opts.timeout_s))
    if opts.route_stats:  # shadow traffic keeps the model it goes to warm, as its own requests do
        r.stat_prefix = f"{names.ROUTE_STAT_PREFIX}{target.revision}"
    return r


def mirror_route_config(view: MeshView, targets: frozenset[str] | set[str],
                        opts: GatewayOptions) -> route_pb2.RouteConfiguration:
    """The internal mirror listener's routes: per mirrored model, its own split (no rules of a
    VirtualService on it apply: a shadow is a copy, not a request of its own)."""
    routes: list[rc.Route] = []
    for name in sorted(targets):
        model = view.models.get(name)
        rule = next((r for r in model.effective_rules() if not r.headers), None) if model else None
        if model is None or rule is None:
            continue
        chosen = _targets(model, RouteRule(rule.destinations), view)
        fractions = split_fractions([w for _, w in chosen])
        for kind in names.KINDS:
            routes += [_mirror_route(model, kind, t, f, opts)
                       for (t, _), f in zip(chosen, fractions, strict=True)]
    return route_pb2.RouteConfiguration(
        name=names.MIRROR_ROUTE, virtual_hosts=[rc.VirtualHost(name="mirror", domains=["*"], routes=routes)],
        validate_clusters=wrappers_pb2.BoolValue())


def _header_ops(ops: HeaderOps, add: list, remove: list) -> None:
    a = base_pb2.HeaderValueOption
    for action, pairs in ((a.OVERWRITE_IF_EXISTS_OR_ADD, ops.set), (a.APPEND_IF_EXISTS_OR_ADD, ops.add)):
        add.extend(a(header=base_pb2.HeaderValue(key=k, value=v), append_action=action) for k, v in pairs)
    remove.extend(ops.remove)


#: The activator is one process: while it restarts (with the control plane, ~2 s) nothing listens
#: on its port. A cold request retries the connection for about that long instead of failing.
ACTIVATOR_RETRY_ON = "connect-failure,refused-stream,reset"
ACTIVATOR_RETRIES = 8
ACTIVATOR_BACKOFF = (0.1, 0.5)  # base, max seconds


def _activator_retry() -> rc.RetryPolicy:
    return rc.RetryPolicy(
        retry_on=ACTIVATOR_RETRY_ON, num_retries=wrappers_pb2.UInt32Value(value=ACTIVATOR_RETRIES),
        retry_back_off=rc.RetryPolicy.RetryBackOff(base_interval=duration(ACTIVATOR_BACKOFF[0]),
                                                   max_interval=duration(ACTIVATOR_BACKOFF[1])))


def _set_headers(route: rc.Route, pairs) -> None:
    route.request_headers_to_add.extend(base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD) for key, value in pairs)


def _fraction(numerator: int | None, route: rc.Route) -> None:
    if numerator is not None:
        route.match.runtime_fraction.CopyFrom(base_pb2.RuntimeFractionalPercent(
            default_value=percent_pb2.FractionalPercent(
                numerator=numerator, denominator=percent_pb2.FractionalPercent.MILLION),
            runtime_key="msm.split.unset",  # never set: the default share applies
        ))


def _unavailable(model: Model, target: Target) -> rc.DirectResponseAction:
    what = f"model '{model.name}'"
    if target.revision:
        what = f"revision '{target.revision}' of {what}"
    return rc.DirectResponseAction(
        status=503, body=base_pb2.DataSource(inline_string=f"no ready copy of {what}"))


class _RouteBuilder:
    """Routes of one model on one listener."""

    def __init__(self, model: Model, kind: str, view: MeshView, opts: GatewayOptions) -> None:
        self.model, self.kind, self.view, self.opts = model, kind, view, opts
        self.prefix = f"/v2/models/{model.name}"
        self.direct = opts.direct_replays(view.activator)

    def routes(self) -> list[rc.Route]:
        out: list[rc.Route] = []
        for i, rule in enumerate(self.model.effective_rules()):
            targets = _targets(self.model, rule, self.view)
            fractions = split_fractions([w for _, w in targets])
            if self.kind == names.REST:
                # (1) standard V2 JSON body (the data-path Lua marks it) and (3) every non-infer
                # call go to the runtime's REST port; (2) other infer bodies are transcoded to gRPC
                variants = ("body", "infer", "other")
            else:
                variants = ("grpc",)
            sticky = rule.sticky_header if len(targets) > 1 else None
            buckets = bucket_ranges([w for _, w in targets]) if sticky else []
            for variant in variants:
                if self.direct:
                    out.extend(self._route(i, rule, variant, target, None, direct=True)
                               for target, _ in targets if target.kind == "activator")
                if len(targets) > 1:
                    out.extend(self._route(i, rule, variant, target, None, pinned=True)
                               for target, _ in targets if target.kind == "runtime")
                for (target, _), bucket in zip(targets, buckets, strict=False):
                    if bucket[0] < bucket[1]:
                        out.append(self._route(i, rule, variant, target, None, bucket=bucket, sticky=sticky))
                for (target, _), frac in zip(targets, fractions, strict=True):
                    out.append(self._route(i, rule, variant, target, frac, sticky=sticky))
        return out

    def _match(self, rule: RouteRule, variant: str, pinned: str | None = None,
               bucket: tuple[int, int] | None = None, direct: str | None = None) -> rc.RouteMatch:
        m = rc.RouteMatch()
        if variant == "grpc":
            m.prefix = "/"
            m.headers.append(_exact(names.MODEL_HEADER, self.model.name))
        else:
            m.path_separated_prefix = self.prefix
            if variant == "body":
                m.headers.append(_exact(data_path.REST_BODY_HEADER, data_path.REST_BODY_DATA))
            elif variant == "infer":
                m.headers.append(_exact(":method", "POST"))
                m.headers.append(rc.HeaderMatcher(
                    name=":path", string_match=string_pb2.StringMatcher(suffix="/infer")))
        m.headers.extend(_header(h) for h in rule.headers)
        if pinned is not None:
            m.headers.append(rc.HeaderMatcher(name=names.ACTIVATED_HEADER, present_match=True))
            m.headers.append(_exact(names.REVISION_HEADER, pinned))
        if bucket is not None:
            span = range_pb2.Int64Range(start=bucket[0], end=bucket[1])
            m.headers.append(rc.HeaderMatcher(name=names.BUCKET_HEADER, range_match=span))
        if direct is not None:
            assert self.view.activator is not None
            m.headers.append(_exact(names.REPLAY_TOKEN_HEADER, self.view.activator.replay_token))
            m.headers.append(rc.HeaderMatcher(name=names.COPY_HEADER[direct], present_match=True))
        return m

    def _route(self, index: int, rule: RouteRule, variant: str, target: Target, frac: int | None,
               pinned: bool = False, bucket: tuple[int, int] | None = None,
               sticky: str | None = None, direct: bool = False) -> rc.Route:
        """One route; ``direct``: the direct replay of a held request for ``target`` (a revision with
        no ready copy) to the copy it names, as if the target had that copy."""
        opts = self.opts
        upstream_grpc = variant in ("infer", "grpc")
        up = names.GRPC if upstream_grpc else names.REST
        if pinned:
            suffix = "pinned"
        elif direct:
            suffix = "direct"
            target = Target(target.revision, "runtime", target.runtime, target.model, target.measured)
        else:
            suffix = f"bucket{bucket[0]}" if bucket is not None else ""
        name = names.route_name(self.model.name, index, variant, target.revision, suffix)
        pin = target.revision if pinned or direct else None
        r = rc.Route(name=name, match=self._match(rule, variant, pin, bucket, up if direct else None))
        _fraction(frac, r)
        # copies' failures go on to the activator; a direct replay's are its own (it came from there)
        fallback = self.view.activator is not None and not direct
        if target.kind == "unavailable":
            r.direct_response.CopyFrom(_unavailable(self.model, target))
        else:
            a = r.route
            if target.kind == "activator":
                # the activator gets the request as the client sent it (model name, REST body),
                # told which model to load (a VirtualService may send it another model's traffic);
                # it replays the request through these routes, which then apply the rule's faults
                # and header changes once
                upstream_grpc = self.kind == names.GRPC
                a.cluster = names.activator_cluster(names.GRPC if upstream_grpc else names.REST)
                _set_headers(r, ((names.ACTIVATE_HEADER, target.model),
                                 (names.REVISION_HEADER, target.revision)))
                r.request_headers_to_remove.append(names.FALLBACK_HEADER)  # only the gateway says so
            else:
                if direct:  # the instance the replay names, among all of the runtime's
                    a.cluster = names.direct_cluster(up, target.runtime)
                else:
                    a.cluster = names.cluster_for(up, target.model, target.revision, target.runtime, opts)
                if fallback:
                    a.cluster = names.fallback_cluster(a.cluster)
                    _set_headers(r, ((names.ACTIVATE_HEADER, target.model),
                                     (names.REVISION_HEADER, target.revision),
                                     (names.FALLBACK_HEADER, self.model.name)))
                if opts.cluster_layout == "subset" and not direct:
                    a.metadata_match.filter_metadata[names.LB_METADATA].fields[
                        names.SUBSET_KEY].string_value = target.revision
                if upstream_grpc:
                    r.metadata.CopyFrom(data_path.route_target_metadata(target.revision))
                else:
                    a.prefix_rewrite = f"/v2/models/{target.revision}"
            timeout = opts.timeout_s if rule.timeout_s is None else rule.timeout_s
            a.timeout.CopyFrom(duration(timeout))
            a.retry_policy.CopyFrom(_activator_retry() if target.kind == "activator"
                                    else _retry(rule, opts, fallback))
            if opts.route_stats and target.kind != "activator":
                # counted once, where the request is served: a cold request reaches the activator
                # and is counted when the activator replays it to the new copy
                r.stat_prefix = f"{names.ROUTE_STAT_PREFIX}{target.revision}"
        if target.kind == "runtime":
            r.route.request_mirror_policies.extend(_mirror_policy(m, upstream_grpc) for m in rule.mirrors
                                                   if m.percent > 0 and m.model in self.view.models)
            _header_ops(rule.request_headers, r.request_headers_to_add, r.request_headers_to_remove)
            _header_ops(rule.response_headers, r.response_headers_to_add, r.response_headers_to_remove)
            if rule.fault is not None:
                r.typed_per_filter_config[data_path.FAULT_FILTER].CopyFrom(pack(fault_config(rule.fault)))
        if target.measured and target.kind == "runtime":
            r.metadata.filter_metadata[names.MEASURE_METADATA].update({names.MEASURE_KEY: True})
        if sticky is not None:
            for filter_name, cfg in data_path.sticky_per_route().items():
                r.typed_per_filter_config[filter_name].CopyFrom(cfg)
            r.metadata.MergeFrom(data_path.sticky_metadata(sticky))
        if bucket is not None:
            r.request_headers_to_remove.append(names.BUCKET_HEADER)
        if variant == "body":
            r.request_headers_to_remove.append(data_path.REST_BODY_HEADER)
        if direct:
            for filter_name, cfg in data_path.direct_per_route(up).items():
                r.typed_per_filter_config[filter_name].CopyFrom(cfg)
            r.request_headers_to_remove.extend((names.REPLAY_TOKEN_HEADER, *names.COPY_HEADER.values()))
        if self.kind == names.REST:
            enabled = upstream_grpc and target.kind == "runtime"
            for filter_name, cfg in data_path.transcoding_per_route(enabled).items():
                r.typed_per_filter_config[filter_name].CopyFrom(cfg)
        return r


def model_routes(model: Model, kind: str, view: MeshView, opts: GatewayOptions) -> list[rc.Route]:
    return _RouteBuilder(model, kind, view, opts).routes()


def _vhost(kind: str, routes: list[rc.Route], opts: GatewayOptions) -> rc.VirtualHost:
    return rc.VirtualHost(
        name=names.VHOST[kind], domains=["*"], routes=routes,
        request_body_buffer_limit=wrappers_pb2.UInt64Value(value=opts.max_request_bytes),
    )


def model_scoped_routes(model: Model, view: MeshView, opts: GatewayOptions) -> tuple[
        dict[str, route_pb2.RouteConfiguration], dict[str, scoped_route_pb2.ScopedRouteConfiguration]]:
    """One model's RouteConfiguration and scope on each listener (Scoped RDS layout)."""
    rcs: dict[str, route_pb2.RouteConfiguration] = {}
    scopes: dict[str, scoped_route_pb2.ScopedRouteConfiguration] = {}
    for kind in names.KINDS:
        name = names.scoped_route_config(kind, model.name)
        rcs[name] = route_pb2.RouteConfiguration(
            name=name, virtual_hosts=[_vhost(kind, model_routes(model, kind, view, opts), opts)],
            validate_clusters=wrappers_pb2.BoolValue())
        scopes[name] = scoped_route_pb2.ScopedRouteConfiguration(
            name=name, route_configuration_name=name,
            key=scoped_route_pb2.ScopedRouteConfiguration.Key(
                fragments=[scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(string_key=model.name),
                           scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(
                               string_key=names.SCOPE_TAG[kind])]))
    return rcs, scopes


def build_routes(view: MeshView, opts: GatewayOptions) -> tuple[
        dict[str, route_pb2.RouteConfiguration], dict[str, scoped_route_pb2.ScopedRouteConfiguration]]:
    """RouteConfigurations (and, for Scoped RDS, one scope per model and listener)."""
    rcs: dict[str, route_pb2.RouteConfiguration] = {}
    scopes: dict[str, scoped_route_pb2.ScopedRouteConfiguration] = {}
    models = [view.models[k] for k in sorted(view.models)]
    rcs[names.MIRROR_ROUTE] = mirror_route_config(
        view, frozenset().union(*(mirror_targets(m) for m in models)), opts)
    if opts.route_layout == "flat":
        for kind in names.KINDS:
            routes = [r for m in models for r in model_routes(m, kind, view, opts)]
            name = names.flat_route_config(kind)
            rcs[name] = route_pb2.RouteConfiguration(
                name=name, virtual_hosts=[_vhost(kind, routes, opts)],
                validate_clusters=wrappers_pb2.BoolValue())
        return rcs, scopes
    for m in models:
        model_rcs, model_scopes = model_scoped_routes(m, view, opts)
        rcs.update(model_rcs)
        scopes.update(model_scopes)
    return rcs, scopes
