"""The activator's direct replay in the translation: per runtime a cluster of every instance of
it, and per cold revision a route that only the activator's token opens, to the instance a
header names (tests/e2e/test_gateway_routing.py shows it in Envoy)."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.stateful_session.v3 import stateful_session_pb2
from envoy.extensions.http.stateful_session.header.v3 import header_pb2

from xds_server import resource_types as rt
from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    Fault,
    HeaderOps,
    MeshView,
    Model,
    Revision,
    RouteRule,
)
from xds_server.translate import GatewayOptions, names, translate
from xds_server.translate import data_path as dp
from xds_server.translate.incremental import IncrementalTranslator
from xds_server.translate.routes import model_routes

C0 = Copy("rt-0", "10.0.0.1", 8080, 8081)
C1 = Copy("rt-1", "10.0.0.2", 8090, 8091)
TOKEN = "s3cret"
ACT = ActivatorEndpoint("127.0.0.1", 7000, 7001, replay_token=TOKEN)
NO_TOKEN = ActivatorEndpoint("127.0.0.1", 7000, 7001)


def view_of(*models: Model, activator: ActivatorEndpoint | None = ACT, **instances) -> MeshView:
    return MeshView({m.name: m for m in models}, activator,
                    runtime_instances={r: tuple(i) for r, i in instances.items()})


def headers_of(route: rc.Route) -> dict[str, rc.HeaderMatcher]:
    return {h.name: h for h in route.match.headers}


def direct_routes(model: Model, view: MeshView, opts: GatewayOptions, kind: str) -> list[rc.Route]:
    return [r for r in model_routes(model, kind, view, opts) if r.name.endswith("/direct")]


def session_header(route: rc.Route) -> tuple[str, bool]:
    """The header the route's stateful session reads, and whether it is strict."""
    cfg = rc.FilterConfig()
    route.typed_per_filter_config[dp.DIRECT_FILTER].Unpack(cfg)
    per_route = stateful_session_pb2.StatefulSessionPerRoute()
    cfg.config.Unpack(per_route)
    state = header_pb2.HeaderBasedSessionState()
    per_route.stateful_session.session_state.typed_config.Unpack(state)
    assert per_route.stateful_session.session_state.name == "envoy.http.stateful_session.header"
    return state.name, per_route.stateful_session.strict


def endpoints(out, name: str) -> list[tuple[str, int]]:
    return [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
            for e in out[rt.ENDPOINT][name].endpoints[0].lb_endpoints]


@pytest.mark.parametrize("layout", ["subset", "per_revision"])
def test_each_runtime_has_a_direct_cluster_of_every_instance_of_it(layout: str) -> None:
    opts = GatewayOptions(cluster_layout=layout)
    view = view_of(Model("m", (Revision("m__1", runtime="a", copies=(C0,)),)), a=[C1, C0], b=[C1])
    out = translate(view, opts)
    assert endpoints(out, names.direct_cluster(names.REST, "a")) == [("10.0.0.1", 8080), ("10.0.0.2", 8090)]
    assert endpoints(out, names.direct_cluster(names.GRPC, "a")) == [("10.0.0.1", 8081), ("10.0.0.2", 8091)]
    assert endpoints(out, names.direct_cluster(names.REST, "b")) == [("10.0.0.2", 8090)]
    rest, grpc_ = (out[rt.CLUSTER][names.direct_cluster(k, "a")] for k in names.KINDS)
    # no subsets (the stateful session picks the instance), HTTP/2 to the gRPC port, EDS by ADS
    assert not rest.HasField("lb_subset_config") and not grpc_.HasField("lb_subset_config")
    assert grpc_.typed_extension_protocol_options and not rest.typed_extension_protocol_options
    assert rest.type == rest.EDS and rest.eds_cluster_config.eds_config.HasField("ads")
    # nothing of the kind without a token, or with direct replays off
    for v, o in ((view_of(*view.models.values(), activator=NO_TOKEN, a=[C0]), opts),
                 (view, GatewayOptions(cluster_layout=layout, direct_replay=False))):
        assert not any(n.startswith("direct_") for n in translate(v, o)[rt.CLUSTER])


def test_the_incremental_translation_follows_the_instances_as_the_full_one_does() -> None:
    opts = GatewayOptions(subset_shards=1)
    inc = IncrementalTranslator(opts)
    a = Model("a", (Revision("a__1"),))
    views = [view_of(a), view_of(a, default=[C0]), view_of(a, default=[C0, C1]),
             view_of(Model("a", (Revision("a__1", copies=(C1,)),)), default=[C0, C1]),
             view_of(a, default=[C1]), view_of(a, activator=NO_TOKEN, default=[C1]),
             view_of(a, default=[C1])]
    for view in views:
        assert inc.translate(view) == translate(view, opts)
    inc2 = IncrementalTranslator(opts)
    inc2.translate(views[1])
    # a copy loaded on an instance changes nothing of the direct clusters
    changed = inc2.changes(view_of(Model("a", (Revision("a__1", copies=(C0,)),)), default=[C0]))
    assert not any(n.startswith("direct_") for msgs in changed.values() for n in msgs)
    # an instance gone: its clusters' endpoints say so; the last one gone, the clusters go
    assert endpoints(inc2.changes(view_of(a, default=[C1])), names.direct_cluster(names.REST, "default")) == [
        ("10.0.0.2", 8090)]
    gone = inc2.changes(view_of(a))
    assert gone[rt.CLUSTER][names.direct_cluster(names.REST, "default")] is None
    assert gone[rt.ENDPOINT][names.direct_cluster(names.GRPC, "default")] is None


@pytest.mark.parametrize("kind", names.KINDS)
def test_a_cold_revision_has_a_direct_route_per_variant_before_the_activators(kind: str) -> None:
    opts = GatewayOptions()
    cold = Model("cold", (Revision("cold__1", runtime="mlserver"),))
    view = view_of(cold, mlserver=[C0])
    routes = model_routes(cold, kind, view, opts)
    variants = ("body", "infer", "other") if kind == names.REST else ("grpc",)
    # per variant: the direct route, then the activator's
    assert [r.name for r in routes] == [
        n for v in variants for n in (f"cold/0/{v}/cold__1/direct", f"cold/0/{v}/cold__1")]
    for direct, to_activator in zip(routes[::2], routes[1::2], strict=True):
        variant = direct.name.split("/")[2]
        upstream = names.GRPC if variant in ("infer", "grpc") else names.REST
        assert to_activator.route.cluster == names.activator_cluster(kind)
        # the runtime's direct cluster, not a fallback to the activator: the replay came from there
        assert direct.route.cluster == names.direct_cluster(upstream, "mlserver")
        assert not direct.route.HasField("metadata_match")
        h = headers_of(direct)
        assert h[names.REPLAY_TOKEN_HEADER].string_match.exact == TOKEN
        assert h[names.COPY_HEADER[upstream]].present_match
        assert names.COPY_HEADER[names.GRPC if upstream == names.REST else names.REST] not in h
        assert h[names.ACTIVATED_HEADER].present_match
        assert h[names.REVISION_HEADER].string_match.exact == "cold__1"
        # the variant's own conditions stay (the other matchers of the activator's route)
        assert {k: v for k, v in h.items() if k in headers_of(to_activator)} == headers_of(to_activator)
        assert direct.match.path_separated_prefix == to_activator.match.path_separated_prefix
        assert direct.match.prefix == to_activator.match.prefix
        assert session_header(direct) == (names.COPY_HEADER[upstream], True)
        # the copy never sees the token or the address
        removed = set(direct.request_headers_to_remove)
        assert {names.REPLAY_TOKEN_HEADER, *names.COPY_HEADER.values()} <= removed
        # served like a copy's request: under the revision's id, counted as the revision's
        if upstream == names.REST:
            assert direct.route.prefix_rewrite == "/v2/models/cold__1"
        else:
            assert direct.metadata.filter_metadata[dp.REWRITE_FILTER]["target"] == "cold__1"
        assert direct.stat_prefix == "msm_cold__1"
        assert not to_activator.stat_prefix
        assert dp.DIRECT_FILTER not in to_activator.typed_per_filter_config


def test_a_direct_route_applies_the_rules_header_changes_and_fault_as_a_copys_route_does() -> None:
    opts = GatewayOptions()
    rule = RouteRule((Destination("m__1", 100),), fault=Fault(abort_http_status=418, abort_percent=5.0),
                     request_headers=HeaderOps(set=(("x-a", "1"),)))
    cold = Model("m", (Revision("m__1"),), rules=(rule,))
    warm = Model("m", (Revision("m__1", copies=(C0,)),), rules=(rule,))
    (direct,) = direct_routes(cold, view_of(cold), opts, names.GRPC)
    (served,) = model_routes(warm, names.GRPC, view_of(warm), opts)
    assert [h.header.key for h in direct.request_headers_to_add] == ["x-a"]
    assert direct.typed_per_filter_config[dp.FAULT_FILTER] == served.typed_per_filter_config[dp.FAULT_FILTER]
    assert direct.route.timeout == served.route.timeout
    # its retries stay with its copy: no fall back to the activator
    assert not direct.route.retry_policy.HasField("retry_priority")
    assert served.route.retry_policy.HasField("retry_priority")


def test_no_direct_route_without_a_token_or_when_off_or_for_a_warm_revision() -> None:
    cold = Model("cold", (Revision("cold__1"),))
    assert direct_routes(cold, view_of(cold), GatewayOptions(), names.GRPC)
    assert direct_routes(cold, view_of(cold), GatewayOptions(cluster_layout="per_revision"), names.GRPC)
    untokened = view_of(cold, activator=NO_TOKEN)
    assert not direct_routes(cold, untokened, GatewayOptions(), names.GRPC)
    assert not direct_routes(cold, view_of(cold), GatewayOptions(direct_replay=False), names.GRPC)
    warm = Model("w", (Revision("w__1", copies=(C0,)),))
    assert not direct_routes(warm, view_of(warm), GatewayOptions(), names.GRPC)


def test_a_split_has_a_direct_route_for_its_cold_side_only() -> None:
    m = Model("m", (Revision("m__1", copies=(C0,)), Revision("m__2")),
              rules=(RouteRule((Destination("m__1", 90), Destination("m__2", 10))),))
    routes = model_routes(m, names.GRPC, view_of(m), GatewayOptions())
    assert [r.name for r in routes] == ["m/0/grpc/m__2/direct", "m/0/grpc/m__1/pinned",
                                        "m/0/grpc/m__1", "m/0/grpc/m__2"]
