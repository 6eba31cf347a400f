"""Translation MeshView → Envoy resources: pure unit tests, plus Envoy's own validation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy_check import validate_command, write_static
from google.protobuf import struct_pb2

from xds_server.bootstrap import render_bootstrap, static_bootstrap
from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    HeaderMatch,
    MeshView,
    Model,
    Revision,
    RouteRule,
)
from xds_server.translate import GatewayOptions, UpstreamTls, translate
from xds_server.translate import data_path as dp
from xds_server.translate.incremental import IncrementalTranslator
from xds_server.translate.routes import split_fractions

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SCOPED = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

C0 = Copy("rt-0", "10.0.0.1", 8080, 8081)
C1 = Copy("rt-1", "10.0.0.2", 8080, 8081)


def view(activator: ActivatorEndpoint | None = None) -> MeshView:
    return MeshView.of([
        Model("m", (Revision("m__isvc-1", copies=(C0, C1)), Revision("m__isvc-2", copies=(C1,))),
              rules=(RouteRule((Destination("m__isvc-2"),), headers=(HeaderMatch("x-canary", exact="1"),)),
                     RouteRule((Destination("m__isvc-1", 90), Destination("m__isvc-2", 10))))),
        Model("n", (Revision("n__isvc-1", copies=(C0,)),)),
        Model("cold", (Revision("cold__isvc-1"),)),
    ], activator)


def upstreams(resources) -> dict:
    """The clusters of the runtime copies (not the gateway's own mirror clusters)."""
    return {k: c for k, c in resources[CLUSTER].items() if not k.startswith("mirror_")}


def hcm_of(resources, name: str) -> hcm.HttpConnectionManager:
    m = hcm.HttpConnectionManager()
    resources[LISTENER][name].filter_chains[0].filters[0].typed_config.Unpack(m)
    return m


def routes_of(resources, kind: str, model: str, opts: GatewayOptions):
    name = f"msm_{kind}/{model}" if opts.route_layout == "scoped" else f"msm_{kind}"
    routes = resources[ROUTE][name].virtual_hosts[0].routes
    return [r for r in routes if r.name.startswith(f"{model}/")]


def test_split_fractions_are_cumulative_per_million():
    assert split_fractions([100]) == [None]
    assert split_fractions([90, 10]) == [900_000, None]
    assert split_fractions([5, 3, 2]) == [500_000, 800_000, None]
    assert split_fractions([1, 1, 1]) == [333_333, 666_667, None]


def test_listeners_ports_and_scope_keys():
    opts = GatewayOptions(rest_port=18080, grpc_port=18081, listen_address="0.0.0.0")
    res = translate(view(), opts)
    assert set(res[LISTENER]) == {"msm_rest", "msm_grpc", "msm_mirror"}  # and the internal mirror listener
    addr = res[LISTENER]["msm_rest"].address.socket_address
    assert (addr.address, addr.port_value) == ("0.0.0.0", 18080)
    assert res[LISTENER]["msm_grpc"].address.socket_address.port_value == 18081
    rest = hcm_of(res, "msm_rest").scoped_routes.scope_key_builder.fragments[0].header_value_extractor
    assert (rest.name, rest.element_separator, rest.index) == (":path", "/", 3)
    grpc = hcm_of(res, "msm_grpc").scoped_routes.scope_key_builder.fragments[0].header_value_extractor
    assert (grpc.name, grpc.index) == ("mm-vmodel-id", 0)
    # one scope and one small RouteConfiguration per model and listener
    assert [f.string_key for f in res[SCOPED]["msm_rest/m"].key.fragments] == ["m", "v2"]
    # every listener receives every scope over SRDS: the keys differ by the path's first element
    assert [f.string_key for f in res[SCOPED]["msm_grpc/m"].key.fragments] == [
        "m", "inference.GRPCInferenceService"]
    for b in (rest, grpc):
        assert hcm_of(res, f"msm_{'rest' if b is rest else 'grpc'}").scoped_routes.scope_key_builder \
            .fragments[1].header_value_extractor.index == 1
    assert res[SCOPED]["msm_grpc/n"].route_configuration_name == "msm_grpc/n"
    assert set(res[ROUTE]) == {f"msm_{k}/{m}" for k in ("rest", "grpc") for m in ("m", "n", "cold")} | {
        "msm_mirror"}  # the internal mirror listener's routes, empty without mirrors

    flat = translate(view(), GatewayOptions(route_layout="flat"))
    assert SCOPED not in flat
    assert hcm_of(flat, "msm_rest").rds.route_config_name == "msm_rest"
    assert set(flat[ROUTE]) == {"msm_rest", "msm_grpc", "msm_mirror"}


@pytest.mark.parametrize("route_layout", ["scoped", "flat"])
def test_rest_routes_rewrite_to_the_revision_and_pick_the_upstream_port(route_layout):
    opts = GatewayOptions(cluster_layout="per_revision", route_layout=route_layout)
    res = translate(view(), opts)
    routes = routes_of(res, "rest", "n", opts)
    assert [r.name for r in routes] == ["n/0/body/n__isvc-1", "n/0/infer/n__isvc-1", "n/0/other/n__isvc-1"]
    body, infer, other = routes
    for r in routes:
        assert r.match.path_separated_prefix == "/v2/models/n"
        assert r.stat_prefix == "msm_n__isvc-1"
        assert r.route.retry_policy.num_retries.value == 2
    assert [(h.name, h.string_match.exact) for h in body.match.headers] == [
        (dp.REST_BODY_HEADER, dp.REST_BODY_DATA)]
    assert body.route.cluster == other.route.cluster == "rev_rest_n__isvc-1"
    assert body.route.prefix_rewrite == other.route.prefix_rewrite == "/v2/models/n__isvc-1"
    assert list(body.request_headers_to_remove) == [dp.REST_BODY_HEADER]
    # an infer call with any other body is transcoded to gRPC: no path rewrite, model name in metadata
    assert infer.route.cluster == "rev_grpc_n__isvc-1"
    assert infer.route.prefix_rewrite == ""
    assert {(h.name, h.string_match.exact or h.string_match.suffix) for h in infer.match.headers} == {
        (":method", "POST"), (":path", "/infer")}
    assert infer.metadata == dp.route_target_metadata("n__isvc-1")
    assert not body.HasField("metadata")


def test_grpc_routes_match_the_vmodel_header():
    opts = GatewayOptions(cluster_layout="per_revision")
    res = translate(view(), opts)
    (r,) = routes_of(res, "grpc", "n", opts)
    assert [(h.name, h.string_match.exact) for h in r.match.headers] == [("mm-vmodel-id", "n")]
    assert r.route.cluster == "rev_grpc_n__isvc-1"
    assert r.metadata == dp.route_target_metadata("n__isvc-1")


def test_rules_in_order_and_split_by_runtime_fraction():
    opts = GatewayOptions(cluster_layout="per_revision")
    res = translate(view(), opts)
    routes = routes_of(res, "grpc", "m", opts)
    assert [r.name for r in routes] == [
        "m/0/grpc/m__isvc-2", "m/1/grpc/m__isvc-1/pinned", "m/1/grpc/m__isvc-2/pinned",
        "m/1/grpc/m__isvc-1", "m/1/grpc/m__isvc-2"]
    canary, pin1, pin2, first, second = routes
    # the activator's replay of a cold request goes back to the revision it was routed to
    for pin, rev in ((pin1, "m__isvc-1"), (pin2, "m__isvc-2")):
        assert [(h.name, h.present_match or h.string_match.exact) for h in pin.match.headers][-2:] == [
            ("x-msm-activated", True), ("x-msm-revision", rev)]
        assert not pin.match.HasField("runtime_fraction")
        assert pin.route.cluster == f"rev_grpc_{rev}"
    assert ("x-canary", "1") in [(h.name, h.string_match.exact) for h in canary.match.headers]
    assert not canary.match.HasField("runtime_fraction")
    f = first.match.runtime_fraction.default_value
    assert (f.numerator, f.denominator) == (900_000, f.MILLION)
    assert not second.match.HasField("runtime_fraction")
    assert (first.route.cluster, second.route.cluster) == ("rev_grpc_m__isvc-1", "rev_grpc_m__isvc-2")


def test_a_revision_without_copies_gives_its_share_away_or_answers_503():
    v = MeshView.of([Model("m", (Revision("m__1", copies=(C0,)), Revision("m__2")),
                           rules=(RouteRule((Destination("m__1", 50), Destination("m__2", 50))),)),
                     Model("gone", (Revision("gone__1"),))])
    opts = GatewayOptions(cluster_layout="per_revision")
    res = translate(v, opts)
    (r,) = routes_of(res, "grpc", "m", opts)
    assert r.route.cluster == "rev_grpc_m__1" and not r.match.HasField("runtime_fraction")
    for kind in ("rest", "grpc"):
        for r in routes_of(res, kind, "gone", opts):
            assert r.direct_response.status == 503
            assert "gone" in r.direct_response.body.inline_string
    assert "rev_rest_gone__1" not in res[CLUSTER]


def test_activator_takes_revisions_without_copies():
    act = ActivatorEndpoint("127.0.0.1", 7000, 7001)
    opts = GatewayOptions()
    res = translate(view(act), opts)
    for r in routes_of(res, "rest", "cold", opts):
        assert r.route.cluster == "activator_rest"
        assert r.route.prefix_rewrite == ""  # the activator sees the model name the client used
        assert r.stat_prefix == ""  # counted once, when the activator replays it to the copy
    (g,) = routes_of(res, "grpc", "cold", opts)
    assert g.route.cluster == "activator_grpc" and g.stat_prefix == ""
    c = res[CLUSTER]["activator_grpc"]
    assert c.type == cluster_pb2.Cluster.STATIC
    assert c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 7001


def test_retry_policy_and_outlier_detection():
    opts = GatewayOptions(cluster_layout="per_revision", retries=3)
    res = translate(view(), opts)
    (r,) = routes_of(res, "grpc", "n", opts)
    p = r.route.retry_policy
    assert set(p.retry_on.split(",")) == {
        "reset", "connect-failure", "refused-stream", "unavailable", "cancelled"}
    assert p.num_retries.value == 3
    assert [h.name for h in p.retry_host_predicate] == ["envoy.retry_host_predicates.previous_hosts"]
    c = res[CLUSTER]["rev_grpc_n__isvc-1"]
    assert c.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert c.outlier_detection.consecutive_gateway_failure.value == 2
    assert c.outlier_detection.enforcing_consecutive_5xx.value == 0  # a model's 500 is not a dead copy
    assert c.circuit_breakers.thresholds[0].max_retries.value >= 100_000
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in c.typed_extension_protocol_options
    assert not res[CLUSTER]["rev_rest_n__isvc-1"].typed_extension_protocol_options


def test_rule_timeout_and_retries_override_the_defaults():
    v = MeshView.of([Model("m", (Revision("m__1", copies=(C0,)),),
                           rules=(RouteRule((Destination("m__1"),), timeout_s=2.5, retries=0),))])
    opts = GatewayOptions(cluster_layout="per_revision")
    (r,) = routes_of(translate(v, opts), "grpc", "m", opts)
    assert r.route.timeout.ToMilliseconds() == 2500
    assert r.route.retry_policy.num_retries.value == 0


def test_per_revision_layout_clusters_and_endpoints():
    res = translate(view(), GatewayOptions(cluster_layout="per_revision"))
    assert set(upstreams(res)) == {f"rev_{k}_{r}" for k in ("rest", "grpc")
                                 for r in ("m__isvc-1", "m__isvc-2", "n__isvc-1")}
    cla = res[ENDPOINT]["rev_grpc_m__isvc-1"]
    ports = [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
             for e in cla.endpoints[0].lb_endpoints]
    assert ports == [("10.0.0.1", 8081), ("10.0.0.2", 8081)]
    assert res[CLUSTER]["rev_grpc_m__isvc-1"].eds_cluster_config.eds_config.HasField("ads")


def test_subset_layout_lists_revisions_on_instances_and_routes_select_by_metadata():
    opts = GatewayOptions(cluster_layout="subset", subset_shards=1)
    res = translate(view(), opts)
    assert set(upstreams(res)) == {"rt_rest_default_0", "rt_grpc_default_0"}
    c = res[CLUSTER]["rt_rest_default_0"]
    assert c.lb_subset_config.list_as_any
    assert [list(s.keys) for s in c.lb_subset_config.subset_selectors] == [["rev"]]
    assert c.lb_subset_config.fallback_policy == c.lb_subset_config.NO_FALLBACK
    hosts = {e.endpoint.address.socket_address.address:
             [v.string_value for v in e.metadata.filter_metadata["envoy.lb"].fields["rev"].list_value.values]
             for e in res[ENDPOINT]["rt_rest_default_0"].endpoints[0].lb_endpoints}
    assert hosts == {"10.0.0.1": ["m__isvc-1", "n__isvc-1"], "10.0.0.2": ["m__isvc-1", "m__isvc-2"]}
    (r,) = routes_of(res, "grpc", "n", opts)
    assert r.route.cluster == "rt_grpc_default_0"
    assert r.route.metadata_match.filter_metadata["envoy.lb"].fields["rev"].string_value == "n__isvc-1"


def test_subset_shards_keep_a_model_in_one_shard():
    models = [Model(f"m{i}", (Revision(f"m{i}__1", copies=(C0,)),)) for i in range(40)]
    opts = GatewayOptions(cluster_layout="subset", subset_shards=4)
    res = translate(MeshView.of(models), opts)
    assert len(upstreams(res)) == 8
    held = {}
    for name, cla in res[ENDPOINT].items():
        for e in cla.endpoints[0].lb_endpoints:
            for v in e.metadata.filter_metadata["envoy.lb"].fields["rev"].list_value.values:
                held.setdefault(v.string_value, set()).add(name)
    for m in models:
        (r,) = routes_of(res, "grpc", m.name, opts)
        assert held[f"{m.name}__1"] == {r.route.cluster, r.route.cluster.replace("grpc", "rest")}


def test_upstream_tls_reads_certificates_from_sds():
    res = translate(view(), GatewayOptions(upstream_tls=UpstreamTls(sni="runtime.local"), subset_shards=1))
    for name, c in upstreams(res).items():
        assert c.transport_socket.name == "envoy.transport_sockets.tls", name
        ctx = tls_pb2.UpstreamTlsContext()
        c.transport_socket.typed_config.Unpack(ctx)
        cert = ctx.common_tls_context.tls_certificate_sds_secret_configs[0]
        assert cert.name == "default"
        assert cert.sds_config.api_config_source.grpc_services[0].envoy_grpc.cluster_name == "sds-grpc"
        ca = ctx.common_tls_context.combined_validation_context.validation_context_sds_secret_config
        assert ca.name == "ROOTCA"
        assert ctx.sni == "runtime.local"
        assert list(ctx.common_tls_context.alpn_protocols) == (["h2"] if "grpc" in name else [])
    plain = translate(view(), GatewayOptions(subset_shards=1))
    assert not plain[CLUSTER]["rt_rest_default_0"].HasField("transport_socket")


@pytest.mark.parametrize("layout", ["subset", "per_revision"])
def test_istio_mtls_asks_runtimes_for_an_identity_of_their_namespace_and_speaks_istios_alpn(layout):
    ns_view = MeshView.of([
        Model("m", (Revision("m__isvc-1", runtime="models-a/mlserver-1.x", copies=(C0,)),)),
        Model("n", (Revision("n__isvc-1", runtime="mlserver-1.x", copies=(C1,)),)),  # no namespace
    ])
    tls = UpstreamTls(trust_domain="cluster.local")
    res = translate(ns_view, GatewayOptions(upstream_tls=tls, subset_shards=1, cluster_layout=layout))
    seen = {}
    for name, c in upstreams(res).items():
        ctx = tls_pb2.UpstreamTlsContext()
        c.transport_socket.typed_config.Unpack(ctx)
        [san] = ctx.common_tls_context.combined_validation_context.default_validation_context.\
            match_typed_subject_alt_names
        assert san.san_type == san.URI
        seen[name] = san.matcher.prefix
        assert list(ctx.common_tls_context.alpn_protocols) == (["istio-h2"] if "grpc" in name else
                                                               ["istio-http/1.1"])
    assert sorted(set(seen.values())) == ["spiffe://cluster.local/", "spiffe://cluster.local/ns/models-a/sa/"]
    assert len(seen) == 4  # REST and gRPC of each


@pytest.mark.parametrize("layout", ["subset", "per_revision"])
def test_auto_mtls_marks_copies_with_a_sidecar_and_leaves_the_others_plaintext(layout):
    meshed = Copy("rt-0", "10.0.0.1", 8080, 8081, mesh_tls=True)
    plain = Copy("rt-1", "10.0.0.2", 8080, 8081)
    v = MeshView.of([Model("m", (Revision("m__isvc-1", runtime="ns/rt", copies=(meshed, plain)),))])
    opts = GatewayOptions(upstream_tls=UpstreamTls(trust_domain="cluster.local", auto=True), subset_shards=1,
                          cluster_layout=layout)
    for incremental in (False, True):
        res = IncrementalTranslator(opts).translate(v) if incremental else translate(v, opts)
        assert len(upstreams(res)) == 2
        for name, c in upstreams(res).items():
            assert not c.HasField("transport_socket")  # chosen per endpoint
            istio, disabled = c.transport_socket_matches
            assert dict(istio.match.fields) == {"tlsMode": struct_pb2.Value(string_value="istio")}
            assert not disabled.match.fields and disabled.transport_socket.name.endswith("raw_buffer")
            ctx = tls_pb2.UpstreamTlsContext()
            istio.transport_socket.typed_config.Unpack(ctx)
            [san] = ctx.common_tls_context.combined_validation_context.default_validation_context.\
                match_typed_subject_alt_names
            assert san.matcher.prefix == "spiffe://cluster.local/ns/ns/sa/"
            marks = {}
            for ep in res[ENDPOINT][name].endpoints[0].lb_endpoints:
                md = ep.metadata.filter_metadata.get("envoy.transport_socket_match")
                mark = md.fields["tlsMode"].string_value if md else None
                marks[ep.endpoint.address.socket_address.address] = mark
            assert marks == {"10.0.0.1": "istio", "10.0.0.2": None}
    # without auto mTLS no endpoint is marked (the plain gateway's snapshot stays as it was)
    res = translate(v, GatewayOptions(subset_shards=1, cluster_layout=layout))
    for cla in res[ENDPOINT].values():
        for ep in cla.endpoints[0].lb_endpoints:
            assert "envoy.transport_socket_match" not in ep.metadata.filter_metadata


def test_local_replies_are_json_and_grpc_not_found():
    res = translate(view())
    for name in ("msm_rest", "msm_grpc"):
        lrc = hcm_of(res, name).local_reply_config
        assert lrc.body_format.json_format["error"] == "%LOCAL_REPLY_BODY%"
        not_found = lrc.mappers[0]
        assert list(not_found.filter.response_flag_filter.flags) == ["NR"]
        assert not_found.status_code.value == 404
        grpc_status = [h.header.value for h in not_found.headers_to_add if h.header.key == "grpc-status"]
        assert grpc_status == (["5"] if name == "msm_grpc" else [])
        denied = lrc.mappers[1]
        assert denied.filter.status_code_filter.comparison.value.default_value == 403
        assert denied.body.inline_string.startswith("only inference is served here")
        grpc_status = [h.header.value for h in denied.headers_to_add if h.header.key == "grpc-status"]
        assert grpc_status == (["7"] if name == "msm_grpc" else [])
        assert lrc.mappers[2].status_code.value == 503


def test_one_model_change_touches_only_its_own_scoped_routes():
    before = translate(view(), GatewayOptions(cluster_layout="per_revision"))
    v = view()
    models = dict(v.models)
    models["n"] = Model("n", (Revision("n__isvc-1", copies=(C1,)),))
    after = translate(MeshView(models), GatewayOptions(cluster_layout="per_revision"))
    changed = {(t, n) for t in after for n in after[t] if before[t].get(n) != after[t][n]}
    assert changed == {(ENDPOINT, "rev_rest_n__isvc-1"), (ENDPOINT, "rev_grpc_n__isvc-1")}
    assert translate(view()) == translate(view())  # deterministic


def test_options_are_checked():
    with pytest.raises(ValueError):
        GatewayOptions(cluster_layout="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GatewayOptions(subset_shards=0)


def envoy_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(validate_command(path), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("cluster_layout", ["subset", "per_revision"])
@pytest.mark.parametrize("route_layout", ["scoped", "flat"])
@pytest.mark.parametrize("tls", [False, True])
def test_envoy_accepts_the_translated_resources(tmp_path, cluster_layout, route_layout, tls):
    opts = GatewayOptions(cluster_layout=cluster_layout, route_layout=route_layout, subset_shards=2,
                          upstream_tls=UpstreamTls() if tls else None)
    boot = static_bootstrap(translate(view(ActivatorEndpoint("127.0.0.1", 7000, 7001)), opts), admin_port=0)
    p = envoy_validate(write_static(tmp_path / "static.json", boot, upstream_tls=tls))
    assert p.returncode == 0, p.stdout + p.stderr


def test_envoy_rejects_a_broken_route_so_validation_means_something(tmp_path):
    bad = MeshView.of([Model("m", (Revision("m__1", copies=(C0,)),),
                             rules=(RouteRule((Destination("m__1"),),
                                              headers=(HeaderMatch("x", regex="(["),)),))])
    path = tmp_path / "static.json"
    path.write_text(json.dumps(static_bootstrap(translate(bad, GatewayOptions()), admin_port=0)))
    assert envoy_validate(path).returncode != 0


@pytest.mark.parametrize("delta", [True, False])
def test_rendered_bootstrap_is_valid_ads_with_admin_on_loopback(tmp_path, delta):
    import yaml

    text = render_bootstrap(node_id="gw-1", xds_host="127.0.0.1", xds_port=18555, admin_port=9911,
                            delta=delta)
    boot = yaml.safe_load(text)
    assert boot["node"]["id"] == "gw-1"
    assert boot["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9911}
    ads = boot["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    assert ads["grpc_services"][0]["envoy_grpc"]["cluster_name"] == "xds"
    (xds,) = boot["static_resources"]["clusters"]
    assert xds["type"] == "STATIC" and "http2_protocol_options" in json.dumps(xds)
    path = tmp_path / "boot.yaml"
    path.write_text(text)
    p = envoy_validate(path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert yaml.safe_load(render_bootstrap("n", "xds.msm.svc", 1, 2))["static_resources"]["clusters"][0][
        "type"] == "STRICT_DNS"


@pytest.mark.parametrize("layout", ["subset", "per_revision"])
def test_incremental_translation_equals_full_translation_and_reuses_unchanged_models(layout):
    from dataclasses import replace

    from xds_server.translate.incremental import IncrementalTranslator

    opts = GatewayOptions(cluster_layout=layout, subset_shards=4)
    inc = IncrementalTranslator(opts)

    def wire(res):
        return {t: {n: m.SerializeToString(deterministic=True) for n, m in v.items()} for t, v in res.items()}

    def same(a, b) -> bool:
        return wire(a) == wire(b)

    v1 = view()
    first = inc.translate(v1)
    assert same(first, translate(v1, opts))
    # one model moves to another copy; another gets a second revision; the activator appears
    m = v1.models["m"]
    moved = replace(m, revisions=(replace(m.revisions[0], copies=(Copy("i9", "10.0.0.9", 9000, 9001),)),))
    v2 = MeshView.of([moved, *[x for k, x in v1.models.items() if k != "m"]])
    second = inc.translate(v2)
    assert same(second, translate(v2, opts))
    for name, msg in second[ROUTE].items():
        if not name.endswith("/m"):
            assert msg is first[ROUTE][name]  # untouched models keep their message objects
    assert second[ROUTE]["msm_rest/m"] is not first[ROUTE]["msm_rest/m"]
    v3 = MeshView(models=v2.models, activator=ActivatorEndpoint("127.0.0.1", 7001, 7002))
    assert same(inc.translate(v3), translate(v3, opts))
    v4 = MeshView.of([x for k, x in v2.models.items() if k != "n"])
    assert same(inc.translate(v4), translate(v4, opts))


@pytest.mark.parametrize("layout", ["subset", "per_revision"])
def test_patched_snapshots_equal_full_builds(layout):
    from dataclasses import replace

    from xds_server.snapshot import Snapshot
    from xds_server.translate.incremental import IncrementalTranslator

    opts = GatewayOptions(cluster_layout=layout)
    inc = IncrementalTranslator(opts)
    v1 = view()
    snap = Snapshot.build(inc.translate(v1))
    m = v1.models["n"]
    steps = [
        MeshView.of([replace(m, revisions=(replace(m.revisions[0], copies=(C1,)),)),
                     *[x for k, x in v1.models.items() if k != "n"]]),
        MeshView(models=v1.models, activator=ActivatorEndpoint("127.0.0.1", 7001, 7002)),
        MeshView.of([x for k, x in v1.models.items() if k != "m"]),
        v1,
    ]
    # what is rebuilt per step: the changed model and its group; with the activator come or gone,
    # every model's routes and every group's clusters (groups stay while their models do)
    rebuilt = {"subset": [2, 6, 6, 2], "per_revision": [1, 3, 3, 1]}[layout]
    for v, expected in zip(steps, rebuilt, strict=True):
        changes = inc.changes(v)
        patched = Snapshot.patch(snap, changes)
        full = Snapshot.build(translate(v, opts))
        assert patched.version == full.version
        assert {t: set(r) for t, r in patched.resources.items() if r} == {
            t: set(r) for t, r in full.resources.items() if r}
        assert inc.rebuilt == expected  # only what changed was rebuilt
        snap = patched


def test_routes_to_the_activator_ride_out_its_restart():
    """The activator restarts with the control plane: a cold request retries the connection for a
    few seconds instead of failing; requests to runtimes keep their own retry policy."""
    from xds_server.mesh_view import ActivatorEndpoint

    models = [Model("cold", (Revision("cold__isvc-1"),)),
              Model("warm", (Revision("warm__isvc-1", copies=(C0,)),))]
    v = MeshView.of(models, ActivatorEndpoint("127.0.0.1", 7000, 7001))
    res = translate(v, GatewayOptions(route_layout="flat"))
    routes = {r.name: r for rc_ in res[ROUTE].values() for vh in rc_.virtual_hosts for r in vh.routes}
    cold = [r for n, r in routes.items() if n.startswith("cold/")]
    assert cold and all(r.route.retry_policy == cold[0].route.retry_policy for r in cold)
    p = cold[0].route.retry_policy
    assert set(p.retry_on.split(",")) == {"connect-failure", "refused-stream", "reset"}
    assert p.num_retries.value == 8 and p.retry_back_off.max_interval.ToMilliseconds() == 500
    warm = next(r for n, r in routes.items() if n.startswith("warm/"))
    assert warm.route.retry_policy.num_retries.value == GatewayOptions().retries


def test_a_cold_models_clusters_exist_before_its_first_copy_so_that_copy_changes_no_cluster():
    """A new cluster must warm in Envoy (an EDS round trip) before routes can use it, and the cold
    request waits for the gateway's ACK of its model's first copy: so a model's (runtime, shard)
    clusters exist while the model does, copies or not, and the first copy changes only its
    endpoints and routes. Both translators agree."""
    from dataclasses import replace

    from xds_server.snapshot import Snapshot
    from xds_server.translate import names

    opts = GatewayOptions()  # the subset layout, the default
    act = ActivatorEndpoint("127.0.0.1", 7001, 7002)
    cold = Model("cold", (Revision("cold__isvc-1"),))
    shard = names.shard_of("cold", opts.subset_shards)
    wanted = {names.runtime_cluster(k, "default", shard) for k in names.KINDS}
    wanted |= {names.fallback_cluster(c) for c in wanted}
    before = MeshView.of([cold], act)
    full = translate(before, opts)
    assert wanted <= set(full[CLUSTER])
    for k in names.KINDS:  # no endpoint yet: its routes name the activator
        cla = full[ENDPOINT][names.runtime_cluster(k, "default", shard)]
        assert not [ep for loc in cla.endpoints for ep in loc.lb_endpoints]
    inc = IncrementalTranslator(opts)
    assert {t: {n: m.SerializeToString(deterministic=True) for n, m in r.items()}
            for t, r in inc.translate(before).items()} == {
        t: {n: m.SerializeToString(deterministic=True) for n, m in r.items()} for t, r in full.items()}

    def sent(old: Snapshot, new: Snapshot) -> dict[str, set[str]]:
        """What a gateway holding ``old`` is sent for ``new``: resources added, changed or removed."""
        out = {}
        for t in set(old.resources) | set(new.resources):
            a, b = old.resources.get(t, {}), new.resources.get(t, {})
            names_ = {n for n in set(a) | set(b) if n not in a or n not in b or a[n].version != b[n].version}
            if names_:
                out[t] = names_
        return out

    snap = Snapshot.build(full)
    loaded = MeshView.of([replace(cold, revisions=(replace(cold.revisions[0], copies=(C1,)),))], act)
    with_copy = Snapshot.patch(snap, inc.changes(loaded))
    assert sent(snap, with_copy) == {
        ENDPOINT: {names.runtime_cluster(k, "default", shard) for k in names.KINDS},
        ROUTE: {"msm_rest/cold", "msm_grpc/cold"}}
    # the group goes with its last model, not with its last copy
    without = Snapshot.patch(with_copy, inc.changes(before))
    assert CLUSTER not in sent(with_copy, without)
    gone = Snapshot.patch(without, inc.changes(MeshView.of([], act)))
    assert wanted <= sent(without, gone)[CLUSTER] and not wanted & set(gone.resources[CLUSTER])
