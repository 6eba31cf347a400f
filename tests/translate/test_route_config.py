"""The routes' configuration, field for field where each field is a decision the real-Envoy tests
show working (the activator behind the copies, mirrors, faults, sticky splits), pinned where it
is produced, since the mutation run starts no Envoy."""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import json_format

from xds_server import resource_types as rt
from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    Fault,
    HeaderMatch,
    MeshView,
    Mirror,
    Model,
    Revision,
    RouteRule,
)
from xds_server.translate import GatewayOptions, names, translate
from xds_server.translate import data_path as dp
from xds_server.translate.routes import (
    BUCKETS,
    bucket_ranges,
    fault_config,
    mirror_route_config,
    model_routes,
    sticky_bucket,
)

C0 = Copy("rt-0", "10.0.0.1", 8080, 8081)
ACT = ActivatorEndpoint("127.0.0.1", 7000, 7001)
MILLION = percent_pb2.FractionalPercent.MILLION


def as_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg)


def only_route(model: Model, view: MeshView, opts: GatewayOptions, kind: str = names.GRPC) -> rc.Route:
    (r,) = model_routes(model, kind, view, opts)
    return r


def test_sticky_buckets_are_fnv1a_of_the_keys_bytes() -> None:
    # the published 32-bit FNV-1a vectors ("" 0x811c9dc5, "a" 0xe40c292c, "foobar" 0xbf9cf968),
    # mod 10,000: what envoy/lua/sticky_bucket.lua computes for the same keys
    assert BUCKETS == 10_000
    assert [sticky_bucket(k) for k in ("", "a", "foobar")] == [
        0x811C9DC5 % BUCKETS, 0xE40C292C % BUCKETS, 0xBF9CF968 % BUCKETS]
    assert sticky_bucket("é") == sticky_bucket("\u00e9") != sticky_bucket("e")  # UTF-8 bytes


def test_bucket_ranges_follow_the_cumulative_shares() -> None:
    assert bucket_ranges([1]) == [(0, 10_000)]
    assert bucket_ranges([1, 1]) == [(0, 5_000), (5_000, 10_000)]
    assert bucket_ranges([1, 2, 1]) == [(0, 2_500), (2_500, 7_500), (7_500, 10_000)]
    assert bucket_ranges([1, 99_999]) == [(0, 0), (0, 10_000)]  # too small a share: no bucket


def test_a_copies_route_falls_back_to_the_activator_after_its_copies_had_their_chance() -> None:
    model = Model("m", (Revision("m__1", copies=(C0,)),))
    with_act = MeshView.of([model], ACT)
    for retries, every in ((1, 1), (2, 2), (5, 2)):
        p = only_route(model, with_act, GatewayOptions(retries=retries)).route.retry_policy
        assert p.retry_priority.name == "envoy.retry_priorities.previous_priorities"
        cfg = previous_priorities_config_pb2.PreviousPrioritiesConfig()
        assert p.retry_priority.typed_config.Unpack(cfg)
        assert cfg.update_frequency == every, retries
        assert p.host_selection_retry_max_attempts == 5
    none = only_route(model, with_act, GatewayOptions(retries=0)).route.retry_policy
    assert not none.HasField("retry_priority")  # no retry: nothing to move on to
    alone = only_route(model, MeshView.of([model]), GatewayOptions()).route
    assert not alone.retry_policy.HasField("retry_priority")
    assert alone.cluster == "rt_grpc_default_" + str(names.shard_of("m", 64))


def test_a_cold_request_rides_out_an_activator_restart_with_backoff() -> None:
    model = Model("m", (Revision("m__1"),))
    p = only_route(model, MeshView.of([model], ACT), GatewayOptions()).route.retry_policy
    back_off = p.retry_back_off
    assert (back_off.base_interval.ToMilliseconds(), back_off.max_interval.ToMilliseconds()) == (100, 500)


def test_faults_per_million() -> None:
    delay = fault_config(Fault(delay_s=0.5, delay_percent=12.5))
    assert as_dict(delay) == {"delay": {"fixedDelay": "0.500s",
                                        "percentage": {"numerator": 125_000, "denominator": "MILLION"}}}
    assert delay.delay.percentage.denominator == MILLION
    http = fault_config(Fault(abort_http_status=418, abort_percent=0.5))
    assert as_dict(http) == {"abort": {"httpStatus": 418,
                                       "percentage": {"numerator": 5_000, "denominator": "MILLION"}}}
    grpc = fault_config(Fault(abort_grpc_status=14, abort_percent=100.0))
    assert as_dict(grpc) == {"abort": {"grpcStatus": 14,
                                       "percentage": {"numerator": 1_000_000, "denominator": "MILLION"}}}


def test_header_matches_exact_prefix_and_regex() -> None:
    rule = RouteRule((Destination("m__1"),), headers=(
        HeaderMatch("x-a", exact="1"), HeaderMatch("x-b", prefix="pre"), HeaderMatch("x-c", regex="u[0-9]+")))
    model = Model("m", (Revision("m__1", copies=(C0,)),), rules=(rule,))
    r = only_route(model, MeshView.of([model]), GatewayOptions())
    assert [as_dict(h) for h in r.match.headers] == [
        {"name": "mm-vmodel-id", "stringMatch": {"exact": "m"}},
        {"name": "x-a", "stringMatch": {"exact": "1"}},
        {"name": "x-b", "stringMatch": {"prefix": "pre"}},
        {"name": "x-c", "stringMatch": {"safeRegex": {"regex": "u[0-9]+"}}}]


def test_a_rule_with_nothing_to_route_to_answers_503_naming_the_model() -> None:
    model = Model("m", (Revision("m__1", copies=(C0,)),), rules=(RouteRule((Destination("m__1", 0),)),))
    r = only_route(model, MeshView.of([model]), GatewayOptions())
    assert (r.name, r.direct_response.status) == ("m/0/grpc/", 503)
    assert r.direct_response.body.inline_string == "no ready copy of model 'm'"
    cold = Model("c", (Revision("c__1"),))
    r = only_route(cold, MeshView.of([cold]), GatewayOptions())
    assert r.direct_response.body.inline_string == "no ready copy of revision 'c__1' of model 'c'"


def test_a_mirror_policy_field_for_field() -> None:
    b = Model("b", (Revision("b__1", copies=(C0,)),))
    rule = RouteRule((Destination("a__1"),), mirrors=(Mirror("b", 100.0), Mirror("b", 0.5), Mirror("b", 0.0),
                                                      Mirror("gone", 50.0)))
    a = Model("a", (Revision("a__1", copies=(C0,)),), rules=(rule,))
    view = MeshView.of([a, b])
    full, part = only_route(a, view, GatewayOptions()).route.request_mirror_policies  # 0 % and unknown: none
    header = {"append": {"header": {"key": "x-msm-mirror", "value": "b"},
                         "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"}}
    assert as_dict(full) == {"cluster": "mirror_grpc", "disableShadowHostSuffixAppend": True,
                             "requestHeadersMutations": [header]}
    assert as_dict(part) == {
        "cluster": "mirror_grpc", "disableShadowHostSuffixAppend": True, "requestHeadersMutations": [header],
        "runtimeFraction": {"defaultValue": {"numerator": 5_000, "denominator": "MILLION"},
                            "runtimeKey": "msm.mirror.unset"}}
    assert part.runtime_fraction.default_value.denominator == MILLION


def test_the_mirror_listeners_routes_field_for_field() -> None:
    b = Model("b", (Revision("b__1", copies=(C0,)),))
    view = MeshView.of([b])
    for layout in ("subset", "per_revision"):
        opts = GatewayOptions(cluster_layout=layout, subset_shards=1, timeout_s=7.0)
        cfg = mirror_route_config(view, {"b"}, opts)
        assert (cfg.name, [vh.name for vh in cfg.virtual_hosts]) == ("msm_mirror", ["mirror"])
        rest, grpc = cfg.virtual_hosts[0].routes
        cluster = {"subset": "rt_{}_default_0", "per_revision": "rev_{}_b__1"}[layout]
        subset = {"metadataMatch": {"filterMetadata": {"envoy.lb": {"rev": "b__1"}}}}
        if layout != "subset":
            subset = {}
        header = [{"name": "x-msm-mirror", "stringMatch": {"exact": "b"}}]
        assert as_dict(rest) == {
            "name": "mirror/b/rest/b__1",
            "match": {"prefix": "/v2/models/", "headers": header},
            "route": {"cluster": cluster.format("rest"), "timeout": "7s", **subset,
                      "regexRewrite": {"pattern": {"regex": "^/v2/models/[^/]+"},
                                       "substitution": "/v2/models/b__1"}},
            "statPrefix": "msm_b__1"}
        assert as_dict(grpc) == {
            "name": "mirror/b/grpc/b__1",
            "match": {"prefix": "/inference.GRPCInferenceService/", "headers": header},
            "route": {"cluster": cluster.format("grpc"), "timeout": "7s", **subset},
            "metadata": as_dict(dp.route_target_metadata("b__1")),
            "statPrefix": "msm_b__1"}
    quiet = mirror_route_config(view, {"b"}, GatewayOptions(route_stats=False)).virtual_hosts[0].routes
    assert [r.stat_prefix for r in quiet] == ["", ""]


def test_mirror_routes_follow_the_activator_into_the_incremental_translation() -> None:
    """Without the activator a cold revision's share of the mirrored model's split goes to the
    warm one; with it, that share's shadows are dropped."""
    from xds_server.translate.incremental import IncrementalTranslator

    b = Model("b", (Revision("b__1", copies=(C0,)), Revision("b__2")),
              rules=(RouteRule((Destination("b__1", 50), Destination("b__2", 50))),))
    a = Model("a", (Revision("a__1", copies=(C0,)),), rules=(RouteRule((Destination("a__1"),),
                                                                        mirrors=(Mirror("b"),)),))
    t = IncrementalTranslator(GatewayOptions())
    for view in (MeshView.of([a, b]), MeshView.of([a, b], ACT), MeshView.of([a, b])):
        t.changes(view)
        expected = translate(view, t.opts)[rt.ROUTE][names.MIRROR_ROUTE]
        assert t.translate(view)[rt.ROUTE][names.MIRROR_ROUTE] == expected
    assert [r.name for r in expected.virtual_hosts[0].routes] == ["mirror/b/rest/b__1", "mirror/b/grpc/b__1"]


def test_the_per_try_timeout_of_the_gateway_or_of_the_rule() -> None:
    model = Model("m", (Revision("m__1", copies=(C0,)),))
    view = MeshView.of([model])
    p = only_route(model, view, GatewayOptions(per_try_timeout_s=0.3)).route.retry_policy
    assert p.per_try_timeout.ToMilliseconds() == 300
    assert not only_route(model, view, GatewayOptions()).route.retry_policy.HasField("per_try_timeout")
    ruled = Model("m", model.revisions, rules=(RouteRule((Destination("m__1"),), per_try_timeout_s=1.25),))
    p = only_route(ruled, MeshView.of([ruled]), GatewayOptions(per_try_timeout_s=0.3)).route.retry_policy
    assert p.per_try_timeout.ToMilliseconds() == 1250


def test_every_route_configuration_is_named_as_listed_and_leaves_clusters_unchecked() -> None:
    """Envoy checks a route's cluster only when validate_clusters is true (its default for routes
    in the bootstrap): a route may name a cluster still warming."""
    view = MeshView.of([Model("m", (Revision("m__1", copies=(C0,)),)), Model("n", (Revision("n__1"),))])
    for layout in ("scoped", "flat"):
        res = translate(view, GatewayOptions(route_layout=layout))
        expected = {"scoped": {"msm_rest/m", "msm_grpc/m", "msm_rest/n", "msm_grpc/n"},
                    "flat": {"msm_rest", "msm_grpc"}}[layout] | {"msm_mirror"}
        assert set(res[rt.ROUTE]) == expected
        for name, cfg in res[rt.ROUTE].items():
            assert cfg.name == name
            assert cfg.HasField("validate_clusters") and not cfg.validate_clusters.value, name


def test_route_names_and_the_revision_they_name() -> None:
    assert names.route_name("m", 0, "grpc", "m__1") == "m/0/grpc/m__1"
    assert names.route_name("m", 2, "body", "m__1", "pinned") == "m/2/body/m__1/pinned"
    assert names.revision_of_route("m/2/body/m__1/pinned") == "m__1"
    assert names.revision_of_route("m/0/grpc/") is None and names.revision_of_route("m/0/grpc") is None


def test_a_models_shard_is_the_crc32_of_its_name() -> None:
    import zlib

    odd = next(m for m in ("a", "b", "c", "d") if zlib.crc32(m.encode()) % 2)
    assert names.shard_of(odd, 2) == 1
    assert [names.shard_of(m, 7) for m in ("a", "b")] == [zlib.crc32(b"a") % 7, zlib.crc32(b"b") % 7]
    assert names.shard_of(odd, 1) == 0


def test_a_split_skips_zero_weights_keeps_small_ones_and_answers_503_for_the_first_cold_one() -> None:
    revs = (Revision("m__1", copies=(C0,)), Revision("m__2", copies=(C0,)), Revision("m__3", copies=(C0,)))
    split = RouteRule((Destination("m__1", 0), Destination("m__2", 1), Destination("m__3", 3)))
    model = Model("m", revs, rules=(split,))
    routes = model_routes(model, names.GRPC, MeshView.of([model]), GatewayOptions())
    assert [r.name for r in routes] == ["m/0/grpc/m__2/pinned", "m/0/grpc/m__3/pinned",
                                        "m/0/grpc/m__2", "m/0/grpc/m__3"]
    assert routes[2].match.runtime_fraction.default_value.numerator == 250_000
    cold = Model("c", (Revision("c__1"), Revision("c__2")),
                 rules=(RouteRule((Destination("c__1", 50), Destination("c__2", 50))),))
    (r,) = model_routes(cold, names.GRPC, MeshView.of([cold]), GatewayOptions())
    assert (r.name, r.direct_response.status) == ("c/0/grpc/c__1", 503)


def test_a_fraction_routes_match_field_for_field() -> None:
    revs = (Revision("m__1", copies=(C0,)), Revision("m__2", copies=(C0,)))
    model = Model("m", revs, rules=(RouteRule((Destination("m__1", 3), Destination("m__2", 1))),))
    first = model_routes(model, names.GRPC, MeshView.of([model]), GatewayOptions())[2]
    assert first.name == "m/0/grpc/m__1"
    assert as_dict(first.match) == {
        "prefix": "/", "headers": [{"name": "mm-vmodel-id", "stringMatch": {"exact": "m"}}],
        # never set in Envoy's runtime: the default share applies
        "runtimeFraction": {"defaultValue": {"numerator": 750_000, "denominator": "MILLION"},
                            "runtimeKey": "msm.split.unset"}}


def test_a_sticky_split_needs_two_destinations_and_skips_empty_bucket_ranges() -> None:
    def sticky(*dests: Destination, revs: tuple[Revision, ...]) -> list[str]:
        model = Model("m", revs, rules=(RouteRule(dests, sticky_header="x-user"),))
        routes = model_routes(model, names.GRPC, MeshView.of([model]), GatewayOptions())
        for r in routes:
            on = dp.STICKY_FILTER in r.typed_per_filter_config
            assert on is (not r.name.endswith("/pinned") and len(routes) > 1), r.name
        return [r.name for r in routes]

    warm = (Revision("m__1", copies=(C0,)), Revision("m__2", copies=(C0,)))
    assert sticky(Destination("m__1", 1), Destination("m__2", 1), revs=warm) == [
        "m/0/grpc/m__1/pinned", "m/0/grpc/m__2/pinned", "m/0/grpc/m__1/bucket0", "m/0/grpc/m__2/bucket5000",
        "m/0/grpc/m__1", "m/0/grpc/m__2"]
    # a share too small for a bucket: no bucket route (its range would be empty)
    assert sticky(Destination("m__1", 1), Destination("m__2", 99_999), revs=warm) == [
        "m/0/grpc/m__1/pinned", "m/0/grpc/m__2/pinned", "m/0/grpc/m__2/bucket0",
        "m/0/grpc/m__1", "m/0/grpc/m__2"]
    # one destination left (the other has no copy and no activator holds it): nothing to keep a key on
    half_cold = (Revision("m__1", copies=(C0,)), Revision("m__2"))
    assert sticky(Destination("m__1", 1), Destination("m__2", 1), revs=half_cold) == ["m/0/grpc/m__1"]


def test_the_virtual_host_takes_every_domain_and_buffers_up_to_the_gateways_limit() -> None:
    model = Model("m", (Revision("m__1", copies=(C0,)),))
    res = translate(MeshView.of([model]), GatewayOptions(max_request_bytes=12_345))
    for kind in names.KINDS:
        (vh,) = res[rt.ROUTE][names.scoped_route_config(kind, "m")].virtual_hosts
        assert (vh.name, list(vh.domains), vh.request_body_buffer_limit.value) == (
            names.VHOST[kind], ["*"], 12_345)


def test_transcoding_runs_only_on_rest_routes_to_a_runtimes_grpc_port() -> None:
    """On the REST listener, routes to a runtime's REST port (``data`` bodies, ready, metadata)
    and routes to the activator (which takes the request as the client sent it) turn the
    classifier and the transcoder off; the gRPC listener has neither."""
    off = {dp.CLASSIFY_FILTER, dp.TRANSCODER_FILTER}
    warm = Model("m", (Revision("m__1", copies=(C0,)),))
    cold = Model("c", (Revision("c__1"),))
    view = MeshView.of([warm, cold], ACT)

    def disabled(r: rc.Route) -> set[str]:
        out = set()
        for name, cfg in r.typed_per_filter_config.items():
            fc = rc.FilterConfig()
            if cfg.Unpack(fc) and fc.disabled:
                out.add(name)
        return out

    rest = {r.name: disabled(r) for r in model_routes(warm, names.REST, view, GatewayOptions())}
    assert rest == {"m/0/body/m__1": off, "m/0/infer/m__1": set(), "m/0/other/m__1": off}
    assert {disabled(r) == off for r in model_routes(cold, names.REST, view, GatewayOptions())} == {True}
    for model in (warm, cold):
        assert {n for r in model_routes(model, names.GRPC, view, GatewayOptions())
                for n in r.typed_per_filter_config} == set()


def test_the_mirror_listener_skips_models_it_cannot_route() -> None:
    b = Model("b", (Revision("b__1", copies=(C0,)),))
    tester_only = Model("t", (Revision("t__1", copies=(C0,)),),
                        rules=(RouteRule((Destination("t__1"),), headers=(HeaderMatch("x-a", exact="1"),)),))
    view = MeshView.of([b, tester_only])
    cfg = mirror_route_config(view, {"0gone", "b", "t"}, GatewayOptions())
    # a model not in the view, and one whose every rule matches headers (a shadow has no rule of its own)
    assert [r.name for r in cfg.virtual_hosts[0].routes] == ["mirror/b/rest/b__1", "mirror/b/grpc/b__1"]
    assert list(cfg.virtual_hosts[0].domains) == ["*"]
