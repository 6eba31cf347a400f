"""Composition of a VirtualService's rules with the engine's revisions: pure, then Envoy's verdict."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy_check import validate_command, write_static

from placement.traffic.compose import SCALE, compose
from placement.traffic.policy import HostPolicy, HttpMatch, HttpRule, Retries, RouteDestination, StringMatch
from placement.traffic.policy import Mirror as PolicyMirror
from xds_server import resource_types as rt
from xds_server.bootstrap import static_bootstrap
from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    Fault,
    HeaderMatch,
    HeaderOps,
    MeshView,
    Model,
    Revision,
    RouteRule,
    check_model,
)
from xds_server.translate import GatewayOptions, translate
from xds_server.translate import data_path as dp
from xds_server.translate.incremental import IncrementalTranslator
from xds_server.translate.routes import fault_config

C0 = Copy("rt-0", "10.0.0.1", 8080, 8081)
C1 = Copy("rt-1", "10.0.0.2", 8080, 8081)
ACT = ActivatorEndpoint("127.0.0.1", 7000, 7001)


def engine_view(b_copies: tuple[Copy, ...] = (C1,)) -> MeshView:
    """What the engine publishes: ``a`` plain, ``b`` in a 20 % canary (its new revision cold)."""
    return MeshView.of([
        Model("a", (Revision("a__1", copies=(C0,)),)),
        Model("b", (Revision("b__1", copies=b_copies), Revision("b__2")),
              rules=(RouteRule((Destination("b__1", 80), Destination("b__2", 20))),)),
        Model("c", (Revision("c__1", copies=(C1,)),)),
    ], ACT)


def policy(host: str, *rules: HttpRule) -> HostPolicy:
    return HostPolicy(host, f"VirtualService ns/{host}", rules)


def split(*pairs: tuple[str, int]) -> HttpRule:
    return HttpRule("", (), tuple(RouteDestination(h, w) for h, w in pairs))


def weights(rule: RouteRule) -> dict[str, float]:
    return {d.revision: d.weight / SCALE for d in rule.destinations}


def test_a_destination_takes_the_engine_share_of_each_of_its_revisions() -> None:
    view, problems = compose(engine_view(), {"ab": policy("ab", split(("a", 90), ("b", 10)))})
    assert problems == {}
    (rule,) = view.models["ab"].rules
    # b's 10 % is split as the engine splits b: 80 % old revision, 20 % canary
    assert weights(rule) == pytest.approx({"a__1": 0.9, "b__1": 0.08, "b__2": 0.02})
    assert check_model(view.models["ab"]) == []


def test_a_virtual_host_borrows_revisions_and_leaves_their_owners_alone() -> None:
    before = engine_view()
    view, _ = compose(before, {"ab": policy("ab", split(("a", 50), ("b", 50)))})
    ab = view.models["ab"]
    assert {r.id: r.model for r in ab.revisions} == {"a__1": "a", "b__1": "b", "b__2": "b"}
    assert ab.own_revisions() == ()
    assert [r.copies for r in ab.revisions] == [(C0,), (C1,), ()]
    for name in ("a", "b", "c"):
        assert view.models[name] is before.models[name]


def test_a_policy_on_a_model_name_replaces_its_routing_but_keeps_its_revisions() -> None:
    rule = HttpRule("", (HttpMatch(None, (("x-tester", StringMatch(exact="yes")),)),),
                    (RouteDestination("c", 100),))
    view, _ = compose(engine_view(), {"a": policy("a", rule, split(("a", 100)))})
    a = view.models["a"]
    assert [(r.id, r.model) for r in a.revisions] == [("a__1", None), ("c__1", "c")]
    tester, default = a.rules
    assert tester.headers == (HeaderMatch("x-tester", exact="yes"),)
    assert weights(tester) == {"c__1": 1.0} and weights(default) == {"a__1": 1.0}


def test_match_entries_are_alternatives_and_uri_matches_the_path() -> None:
    rule = HttpRule("", (HttpMatch(None, (("x-a", StringMatch(exact="1")), ("x-b", StringMatch(prefix="2")))),
                         HttpMatch(StringMatch(regex="^/v2/models/ab/infer$"))),
                    (RouteDestination("c", 100),))
    view, _ = compose(engine_view(), {"ab": policy("ab", rule, split(("a", 100)))})
    first, second, rest = view.models["ab"].rules
    assert first.headers == (HeaderMatch("x-a", exact="1"), HeaderMatch("x-b", prefix="2"))
    assert second.headers == (HeaderMatch(":path", regex="^/v2/models/ab/infer$"),)
    assert first.destinations == second.destinations and rest.headers == ()


def test_rule_settings_carry_over() -> None:
    fault = Fault(abort_http_status=503, abort_percent=10.0)
    ops = HeaderOps(set=(("x-a", "1"),), remove=("x-b",))
    rule = replace(split(("a", 100)), fault=fault, timeout_s=3.0, request_headers=ops,
                   response_headers=HeaderOps(add=(("x-c", "2"),)),
                   retries=Retries(4, 0.5, ("5xx", "reset")))
    view, _ = compose(engine_view(), {"ab": policy("ab", rule)})
    (r,) = view.models["ab"].rules
    assert (r.fault, r.timeout_s, r.request_headers, r.response_headers) == (
        fault, 3.0, ops, HeaderOps(add=(("x-c", "2"),)))
    assert (r.retries, r.per_try_timeout_s, r.retry_on) == (4, 0.5, "5xx,reset")


def test_a_policy_whose_destination_is_not_served_is_left_out_and_said() -> None:
    before = engine_view()
    view, problems = compose(before, {"a": policy("a", split(("gone", 100))),
                                      "x": policy("x", split(("gone", 50), ("c", 50)))})
    assert view.models["a"] is before.models["a"]  # a keeps the engine's routing
    assert "x" not in view.models
    assert problems["a"] == "VirtualService ns/a: routes to gone, which is not served"
    assert "gone" in problems["x"]


def test_without_policies_the_view_is_the_engines() -> None:
    v = engine_view()
    assert compose(v, {}) == (v, {})


def test_clusters_stay_with_their_owner_and_are_not_doubled() -> None:
    opts = GatewayOptions(cluster_layout="per_revision")
    view, _ = compose(engine_view(), {"ab": policy("ab", split(("a", 50), ("b", 50)))})
    plain = translate(engine_view(), opts)
    composed = translate(view, opts)
    assert composed[rt.CLUSTER].keys() == plain[rt.CLUSTER].keys()
    subset = GatewayOptions(cluster_layout="subset", subset_shards=4)
    assert translate(view, subset)[rt.ENDPOINT] == translate(engine_view(), subset)[rt.ENDPOINT]


def test_routes_of_a_virtual_host_use_the_owners_clusters_and_tell_the_activator_the_owner() -> None:
    opts = GatewayOptions(cluster_layout="subset", subset_shards=4)
    view, _ = compose(engine_view(), {"ab": policy("ab", split(("a", 50), ("b", 50)))})
    res = translate(view, opts)
    routes = {r.name: r for r in res[rt.ROUTE]["msm_grpc/ab"].virtual_hosts[0].routes}
    own = {r.name: r for r in translate(engine_view(), opts)[rt.ROUTE]["msm_grpc/a"].virtual_hosts[0].routes}
    assert routes["ab/0/grpc/a__1"].route.cluster == own["a/0/grpc/a__1"].route.cluster
    cold = routes["ab/0/grpc/b__2"]  # b's canary revision has no copy: the activator loads b
    assert cold.route.cluster == "activator_grpc"
    added = {h.header.key: h.header.value for h in cold.request_headers_to_add}
    assert added == {"x-msm-model": "b", "x-msm-revision": "b__2"}


def test_a_change_in_a_destination_rebuilds_the_virtual_host() -> None:
    t = IncrementalTranslator(GatewayOptions(cluster_layout="per_revision"))
    pol = {"ab": policy("ab", split(("a", 50), ("b", 50)))}
    t.changes(compose(engine_view(), pol)[0])
    changes = t.changes(compose(engine_view(b_copies=()), pol)[0])
    # b__1 lost its copy: both b's and ab's routes now send its share elsewhere
    assert {"msm_rest/ab", "msm_grpc/ab", "msm_rest/b", "msm_grpc/b"} <= set(changes[rt.ROUTE])
    ab = [r for r in t.translate(compose(engine_view(b_copies=()), pol)[0])[rt.ROUTE]["msm_grpc/ab"]
          .virtual_hosts[0].routes]
    assert "rev_grpc_b__1" not in {r.route.cluster for r in ab}


def test_fault_and_header_operations_reach_the_runtime_routes_only() -> None:
    fault = Fault(delay_s=0.25, delay_percent=50.0, abort_grpc_status=14, abort_percent=1.5)
    rule = replace(split(("a", 50), ("b", 50)), fault=fault,
                   request_headers=HeaderOps(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)),
                   response_headers=HeaderOps(set=(("x-served", "ab"),)))
    view, _ = compose(engine_view(), {"ab": policy("ab", rule)})
    res = translate(view, GatewayOptions(cluster_layout="per_revision"))
    routes = {r.name: r for r in res[rt.ROUTE]["msm_grpc/ab"].virtual_hosts[0].routes}
    warm, cold = routes["ab/0/grpc/a__1"], routes["ab/0/grpc/b__2"]
    assert dp.FAULT_FILTER in warm.typed_per_filter_config
    cfg = type(fault_config(fault))()
    warm.typed_per_filter_config[dp.FAULT_FILTER].Unpack(cfg)
    assert cfg.delay.fixed_delay.ToMilliseconds() == 250 and cfg.delay.percentage.numerator == 500_000
    assert cfg.abort.grpc_status == 14 and cfg.abort.percentage.numerator == 15_000
    added = {(h.header.key, h.header.value, h.append_action) for h in warm.request_headers_to_add}
    hvo = base_pb2.HeaderValueOption
    # the rule's own, and where a request that no copy takes goes on to (the activator's fallback)
    over = hvo.OVERWRITE_IF_EXISTS_OR_ADD
    assert added == {("x-a", "1", over), ("x-b", "2", hvo.APPEND_IF_EXISTS_OR_ADD),
                     ("x-msm-model", "a", over), ("x-msm-revision", "a__1", over),
                     ("x-msm-fallback", "ab", over)}
    assert list(warm.request_headers_to_remove) == ["x-c"]
    assert [h.header.key for h in warm.response_headers_to_add] == ["x-served"]
    # the activator replays the request through these routes: faults and headers apply there, once
    assert dp.FAULT_FILTER not in cold.typed_per_filter_config
    assert {h.header.key for h in cold.request_headers_to_add} == {"x-msm-model", "x-msm-revision"}
    assert not cold.response_headers_to_add


def test_retries_and_timeouts_of_a_rule() -> None:
    rule = replace(split(("a", 100)), retries=Retries(3, 0.5, ("5xx",)), timeout_s=7.0)
    view, _ = compose(engine_view(), {"ab": policy("ab", rule)})
    res = translate(view, GatewayOptions(cluster_layout="per_revision", retries=1))
    (r,) = res[rt.ROUTE]["msm_grpc/ab"].virtual_hosts[0].routes
    p = r.route.retry_policy
    assert (p.retry_on, p.num_retries.value, p.per_try_timeout.ToMilliseconds()) == ("5xx", 3, 500)
    assert r.route.timeout.seconds == 7
    plain = translate(engine_view(), GatewayOptions(cluster_layout="per_revision", retries=1))
    (r,) = plain[rt.ROUTE]["msm_grpc/a"].virtual_hosts[0].routes
    assert r.route.retry_policy.num_retries.value == 1 and "connect-failure" in r.route.retry_policy.retry_on


@pytest.mark.parametrize("cluster_layout", ["subset", "per_revision"])
@pytest.mark.parametrize("route_layout", ["scoped", "flat"])
def test_envoy_accepts_a_composed_view(tmp_path, cluster_layout, route_layout) -> None:
    rule = HttpRule(
        "", (HttpMatch(StringMatch(prefix="/v2/models/ab"), (("x-user", StringMatch(regex="u[0-9]+")),)),),
        (RouteDestination("a", 30), RouteDestination("b", 70)),
        fault=Fault(delay_s=0.1, delay_percent=5.0, abort_http_status=418, abort_percent=1.0),
        retries=Retries(2, 1.0, ("5xx", "retriable-4xx")), timeout_s=9.0,
        request_headers=HeaderOps(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)),
        response_headers=HeaderOps(set=(("x-d", "3"),), remove=("x-e",)))
    grpc_abort = replace(split(("c", 100)), fault=Fault(abort_grpc_status=14),
                         mirrors=(PolicyMirror("a", 100.0), PolicyMirror("b", 12.5)))
    sticky = HostPolicy("s", "VirtualService ns/s", (split(("a", 50), ("b", 50)),), sticky_header="x-user")
    view, problems = compose(engine_view(), {"ab": policy("ab", rule, grpc_abort),
                                             "a": policy("a", split(("c", 100))), "s": sticky})
    assert problems == {}
    opts = GatewayOptions(cluster_layout=cluster_layout, route_layout=route_layout, subset_shards=2)
    boot = static_bootstrap(translate(view, opts), admin_port=0)
    path = write_static(tmp_path / "static.json", boot, upstream_tls=False)
    p = subprocess.run(validate_command(path), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_sticky_split_routes_by_bucket_ranges_before_its_fractions() -> None:
    pol = HostPolicy("s", "VirtualService ns/s", (split(("a", 50), ("b", 50)),), sticky_header="x-user")
    view, _ = compose(engine_view(), {"s": pol})
    assert {r.sticky_header for r in view.models["s"].rules} == {"x-user"}
    res = translate(view, GatewayOptions(cluster_layout="per_revision"))
    routes = res[rt.ROUTE]["msm_grpc/s"].virtual_hosts[0].routes
    assert [r.name for r in routes] == [
        "s/0/grpc/a__1/pinned", "s/0/grpc/b__1/pinned",
        "s/0/grpc/a__1/bucket0", "s/0/grpc/b__1/bucket5000", "s/0/grpc/b__2/bucket9000",
        "s/0/grpc/a__1", "s/0/grpc/b__1", "s/0/grpc/b__2"]
    spans = [(h.range_match.start, h.range_match.end) for r in routes[2:5] for h in r.match.headers
             if h.name == "x-msm-bucket"]
    assert spans == [(0, 5000), (5000, 9000), (9000, 10000)]  # b's 50 % is the engine's 80/20
    for r in routes[2:]:
        assert dp.STICKY_FILTER in r.typed_per_filter_config
        assert r.metadata.filter_metadata[dp.STICKY_FILTER]["header"] == "x-user"
    assert dp.STICKY_FILTER not in routes[0].typed_per_filter_config  # the replay is pinned already
    assert list(routes[2].request_headers_to_remove) == ["x-msm-bucket"]


def test_mirrors_shadow_runtime_routes_to_the_internal_listener_which_routes_them_on() -> None:
    rule = replace(split(("a", 100)), mirrors=(PolicyMirror("c", 100.0), PolicyMirror("b", 25.0)))
    view, problems = compose(engine_view(), {"ab": policy("ab", rule)})
    assert problems == {}
    assert [(m.model, m.percent) for m in view.models["ab"].rules[0].mirrors] == [("c", 100.0), ("b", 25.0)]
    res = translate(view, GatewayOptions(cluster_layout="per_revision"))
    rest = {r.name: r for r in res[rt.ROUTE]["msm_rest/ab"].virtual_hosts[0].routes}
    body, infer = rest["ab/0/body/a__1"], rest["ab/0/infer/a__1"]
    # a V2 `data` body goes to the REST port, so does its shadow; a transcoded one is gRPC by then
    assert [p.cluster for p in body.route.request_mirror_policies] == ["mirror_rest", "mirror_rest"]
    assert [p.cluster for p in infer.route.request_mirror_policies] == ["mirror_grpc", "mirror_grpc"]
    full, quarter = infer.route.request_mirror_policies
    assert [(m.append.header.key, m.append.header.value) for m in full.request_headers_mutations] == [
        ("x-msm-mirror", "c")]
    assert not full.HasField("runtime_fraction")
    assert quarter.runtime_fraction.default_value.numerator == 250_000  # per million
    # the mirror listener's routes: each mirrored model's own split, rewritten for its revision
    mirror = {r.name: r for r in res[rt.ROUTE]["msm_mirror"].virtual_hosts[0].routes}
    assert set(mirror) == {f"mirror/{m}/{k}/{r}" for k in ("rest", "grpc")
                           for m, r in (("b", "b__1"), ("b", "b__2"), ("c", "c__1"))}
    c_rest, c_grpc = mirror["mirror/c/rest/c__1"], mirror["mirror/c/grpc/c__1"]
    assert [(h.name, h.string_match.exact) for h in c_rest.match.headers] == [("x-msm-mirror", "c")]
    assert c_rest.route.regex_rewrite.substitution == "/v2/models/c__1"
    assert c_rest.route.cluster == "rev_rest_c__1" and c_grpc.route.cluster == "rev_grpc_c__1"
    assert c_grpc.metadata == dp.route_target_metadata("c__1")
    # b's canary revision has no copy: its shadows are dropped, never sent to the activator
    assert mirror["mirror/b/grpc/b__2"].direct_response.status == 503
    assert mirror["mirror/b/grpc/b__1"].match.runtime_fraction.default_value.numerator == 800_000


def test_the_mirror_routes_follow_the_mirrored_models_incrementally() -> None:
    rule = replace(split(("a", 100)), mirrors=(PolicyMirror("b", 100.0),))
    pol = {"ab": policy("ab", rule)}
    t = IncrementalTranslator(GatewayOptions(cluster_layout="per_revision"))
    first = t.changes(compose(engine_view(), pol)[0])
    assert "msm_mirror" in first[rt.ROUTE] and "mirror_rest" in first[rt.CLUSTER]
    # c changes: nothing mirrors to c, the mirror routes stay
    a, b, _ = engine_view().models.values()
    moved = MeshView.of([a, b, Model("c", (Revision("c__1", copies=(C0,)),))], ACT)
    assert "msm_mirror" not in t.changes(compose(moved, pol)[0]).get(rt.ROUTE, {})
    # b loses its copy: its shadows now go nowhere
    gone = t.changes(compose(engine_view(b_copies=()), pol)[0])
    routes = gone[rt.ROUTE]["msm_mirror"].virtual_hosts[0].routes
    assert {r.direct_response.status for r in routes} == {503}
    # no mirror left: the routes are empty (the internal listener keeps its route configuration)
    assert not t.changes(compose(engine_view(), {"ab": policy("ab", split(("a", 100)))})[0])[rt.ROUTE][
        "msm_mirror"].virtual_hosts[0].routes


def test_revisions_in_a_rollout_are_measured_wherever_they_are_routed() -> None:
    pol = {"ab": policy("ab", split(("a", 50), ("b", 50)))}
    view, _ = compose(engine_view(), pol, measured=frozenset({"b__1"}))
    assert [r.id for r in view.models["b"].revisions if r.measured] == ["b__1"]
    assert [r.id for r in view.models["ab"].revisions if r.measured] == ["b__1"]  # borrowed, still measured
    opts = GatewayOptions(cluster_layout="per_revision", measure_cluster="xds", measure_token="secret")
    res = translate(view, opts)
    routes = {r.name: r for r in res[rt.ROUTE]["msm_grpc/ab"].virtual_hosts[0].routes}
    assert routes["ab/0/grpc/b__1"].metadata.filter_metadata["msm.measure"]["on"] is True
    assert "msm.measure" not in routes["ab/0/grpc/a__1"].metadata.filter_metadata
    m = hcm.HttpConnectionManager()
    res[rt.LISTENER]["msm_grpc"].filter_chains[0].filters[0].typed_config.Unpack(m)
    (log,) = m.access_log
    assert log.name == "envoy.access_loggers.http_grpc"
    cfg = als_pb2.HttpGrpcAccessLogConfig()
    log.typed_config.Unpack(cfg)
    service = cfg.common_config.grpc_service
    assert service.envoy_grpc.cluster_name == "xds"
    assert [(h.key, h.value) for h in service.initial_metadata] == [("x-msm-gateway-token", "secret")]
    cel = cel_pb2.ExpressionFilter()
    log.filter.extension_filter.typed_config.Unpack(cel)
    assert "msm.measure" in cel.expression
    plain = translate(view, GatewayOptions(cluster_layout="per_revision"))  # no cluster: no reports
    m = hcm.HttpConnectionManager()
    plain[rt.LISTENER]["msm_grpc"].filter_chains[0].filters[0].typed_config.Unpack(m)
    assert not m.access_log


def test_reports_go_to_the_deciding_control_plane_the_view_names() -> None:
    from xds_server.mesh_view import MeasureEndpoint

    opts = GatewayOptions(cluster_layout="per_revision", measure_cluster="msm_measure", measure_token="t")
    leader = replace(engine_view(), measure=MeasureEndpoint("10.0.0.7", 18000))
    c = translate(leader, opts)[rt.CLUSTER]["msm_measure"]
    ep = c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (ep.address, ep.port_value) == ("10.0.0.7", 18000)
    assert "msm_measure" not in translate(engine_view(), opts)[rt.CLUSTER]  # no endpoint: no cluster
    t = IncrementalTranslator(opts)
    assert "msm_measure" in t.changes(leader)[rt.CLUSTER]
    assert "msm_measure" not in t.changes(leader).get(rt.CLUSTER, {})  # unchanged: not resent
    moved = t.changes(replace(leader, measure=MeasureEndpoint("10.0.0.8", 18000)))[rt.CLUSTER]["msm_measure"]
    address = moved.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert address.address == "10.0.0.8"


def test_a_model_named_by_several_rules_is_borrowed_once_and_a_one_percent_share_routes() -> None:
    tester = HttpRule("", (HttpMatch(None, (("x-a", StringMatch(exact="1")),)),),
                      (RouteDestination("b", 100),))
    rules = (tester, split(("a", 99), ("b", 1)))
    view, problems = compose(engine_view(), {"ab": policy("ab", *rules)})
    assert problems == {}
    assert [r.id for r in view.models["ab"].revisions] == ["b__1", "b__2", "a__1"]  # each once
    assert weights(view.models["ab"].rules[1]) == pytest.approx({"a__1": 0.99, "b__1": 0.008, "b__2": 0.002})


def test_composing_keeps_the_views_activator_and_runtimes_instances() -> None:
    act = ActivatorEndpoint("127.0.0.1", 7000, 7001, replay_token="tok")
    view = MeshView({"a": Model("a", (Revision("a__1", copies=(C0,)),))}, act,
                    runtime_instances={"default": (C0, C1)})
    for measured in (frozenset(), frozenset({"a__1"})):
        composed, problems = compose(view, {"vs": policy("vs", split(("a", 100)))}, measured)
        assert problems == {}
        assert composed.activator == act and composed.runtime_instances == {"default": (C0, C1)}
        assert set(composed.models) == {"a", "vs"}
