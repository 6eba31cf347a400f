"""The clusters and their endpoints, field for field: what the real-Envoy tests show working
(outlier ejection, the activator behind the copies, TLS to the runtimes) pinned where it is
produced, since the mutation run starts no Envoy."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from xds_server.mesh_view import ActivatorEndpoint, Copy, MeasureEndpoint, MeshView, Model, Revision
from xds_server.translate import names
from xds_server.translate.clusters import (
    OVERPROVISIONING_FACTOR,
    activator_clusters,
    build_clusters,
    fallback_cluster,
    group_clusters,
    mirror_clusters,
    model_revision_clusters,
    spiffe_prefix,
    subset_groups,
    tls_transport_socket,
)
from xds_server.translate.options import GatewayOptions, UpstreamTls

C0 = Copy("rt-0", "10.0.0.1", 8080, 8081)
C1 = Copy("rt-1", "10.0.0.2", 9080, 9081)
ACT = ActivatorEndpoint("10.0.0.9", 7000, 7001)
NO_LIMITS = {"thresholds": [{"maxConnections": 1_000_000, "maxPendingRequests": 1_000_000,
                             "maxRequests": 1_000_000, "maxRetries": 1_000_000}]}
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicitHttpConfig": {"http2ProtocolOptions": {}}}}
SDS = {"apiConfigSource": {"apiType": "GRPC", "transportApiVersion": "V3",
                           "grpcServices": [{"envoyGrpc": {"clusterName": "sds-x"}}]},
       "resourceApiVersion": "V3"}


def as_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg)


def endpoints(cla: Any) -> list[tuple[str, int, list[str]]]:
    """(address, port, revisions listed in its subset metadata) per endpoint of the only locality."""
    (locality,) = cla.endpoints
    out = []
    for ep in locality.lb_endpoints:
        sa = ep.endpoint.address.socket_address
        md = ep.metadata.filter_metadata.get(names.LB_METADATA)
        revs = [v.string_value for v in md.fields[names.SUBSET_KEY].list_value.values] if md else []
        out.append((sa.address, sa.port_value, revs))
    return out


def tls_context(socket: Any) -> tls_pb2.UpstreamTlsContext:
    ctx = tls_pb2.UpstreamTlsContext()
    assert socket.name == "envoy.transport_sockets.tls"
    assert socket.typed_config.Unpack(ctx)
    return ctx


def test_a_copies_cluster_field_for_field() -> None:
    opts = GatewayOptions(cluster_layout="per_revision", connect_timeout_s=0.25,
                          outlier_consecutive_gateway_failure=3, outlier_interval_s=1.5,
                          outlier_base_ejection_s=20.0, outlier_max_ejection_percent=60)
    model = Model("m", (Revision("m__1", copies=(C1, C0)),))
    clusters, clas = model_revision_clusters(model, opts)
    assert sorted(clusters) == sorted(clas) == ["rev_grpc_m__1", "rev_rest_m__1"]
    rest = {
        "name": "rev_rest_m__1", "type": "EDS",
        "edsClusterConfig": {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"}},
        "connectTimeout": "0.250s", "lbPolicy": "LEAST_REQUEST", "circuitBreakers": NO_LIMITS,
        "outlierDetection": {
            "consecutiveGatewayFailure": 3, "enforcingConsecutiveGatewayFailure": 100,
            "enforcingConsecutive5xx": 0, "enforcingSuccessRate": 0,  # a model's 500 is its answer
            "interval": "1.500s", "baseEjectionTime": "20s", "maxEjectionPercent": 60},
    }
    assert as_dict(clusters["rev_rest_m__1"]) == rest
    # gRPC speaks HTTP/2 upstream; nothing else differs
    assert as_dict(clusters["rev_grpc_m__1"]) == {**rest, "name": "rev_grpc_m__1",
                                                 "typedExtensionProtocolOptions": H2}
    # endpoints: the copies by instance, on the listener's port, all of the traffic to them while
    # any is healthy (none spills to the activator's priority)
    for kind, port in ((names.REST, 0), (names.GRPC, 1)):
        cla = clas[names.revision_cluster(kind, "m__1")]
        assert cla.cluster_name == names.revision_cluster(kind, "m__1")
        assert cla.policy.overprovisioning_factor.value == OVERPROVISIONING_FACTOR == 100_000
        assert endpoints(cla) == [("10.0.0.1", (8080, 8081)[port], []), ("10.0.0.2", (9080, 9081)[port], [])]
        assert not any(ep.HasField("metadata") for ep in cla.endpoints[0].lb_endpoints)


def test_a_revision_without_copies_has_no_cluster_in_the_per_revision_layout() -> None:
    model = Model("m", (Revision("m__1"), Revision("m__2", copies=(C0,)), Revision("m__3")))
    clusters, clas = model_revision_clusters(model, GatewayOptions(cluster_layout="per_revision"))
    assert sorted(clusters) == sorted(clas) == ["rev_grpc_m__2", "rev_rest_m__2"]


def test_a_runtime_group_lists_each_instance_once_with_the_revisions_it_holds() -> None:
    opts = GatewayOptions(subset_shards=1)
    view = MeshView.of([
        Model("b", (Revision("b__2", copies=(C1, C0)), Revision("b__1", copies=(C0,)))),
        Model("a", (Revision("a__1", runtime="other", copies=(C1,)),)),
        Model("cold", (Revision("cold__1"),)),
        # a borrowed revision (a VirtualService's) is its owner's: no second listing
        Model("vs", (Revision("b__2", copies=(C1, C0), model="b"),)),
    ])
    groups = subset_groups(view, opts)
    assert groups == {
        ("default", 0): {"rt-0": ("10.0.0.1", 8080, 8081, False, ["b__2", "b__1"]),
                         "rt-1": ("10.0.0.2", 9080, 9081, False, ["b__2"])},
        ("other", 0): {"rt-1": ("10.0.0.2", 9080, 9081, False, ["a__1"])},
    }
    clusters, clas = build_clusters(view, opts)
    assert sorted(clas) == ["rt_grpc_default_0", "rt_grpc_other_0", "rt_rest_default_0", "rt_rest_other_0"]
    assert endpoints(clas["rt_rest_default_0"]) == [("10.0.0.1", 8080, ["b__1", "b__2"]),
                                                    ("10.0.0.2", 9080, ["b__2"])]
    assert endpoints(clas["rt_grpc_default_0"]) == [("10.0.0.1", 8081, ["b__1", "b__2"]),
                                                    ("10.0.0.2", 9081, ["b__2"])]
    assert clas["rt_grpc_other_0"].policy.overprovisioning_factor.value == OVERPROVISIONING_FACTOR
    c = clusters["rt_rest_default_0"]
    assert as_dict(c.lb_subset_config) == {"listAsAny": True, "subsetSelectors": [{"keys": ["rev"]}]}
    assert c.lb_subset_config.fallback_policy == c.lb_subset_config.NO_FALLBACK  # the default, 0
    assert not model_revision_clusters(view.models["b"], GatewayOptions(cluster_layout="per_revision"))[
        0]["rev_rest_b__1"].HasField("lb_subset_config")


def test_a_group_of_cold_models_has_clusters_without_endpoints() -> None:
    view = MeshView.of([Model("cold", (Revision("cold__1", runtime="rt"),))])
    groups = subset_groups(view, GatewayOptions(subset_shards=1))
    assert groups == {("rt", 0): {}}
    clusters, clas = group_clusters("rt", 0, {}, GatewayOptions(subset_shards=1))
    assert sorted(clusters) == ["rt_grpc_rt_0", "rt_rest_rt_0"]
    assert [endpoints(cla) for cla in clas.values()] == [[], []]


def test_with_an_activator_every_copies_cluster_falls_back_to_it() -> None:
    opts = GatewayOptions(subset_shards=1, connect_timeout_s=0.5)
    view = MeshView.of([Model("m", (Revision("m__1", copies=(C0,)),))], ACT)
    clusters, _ = build_clusters(view, opts)
    assert sorted(clusters) == sorted([
        "rt_rest_default_0", "rt_grpc_default_0", "fb_rt_rest_default_0", "fb_rt_grpc_default_0",
        "activator_rest", "activator_grpc", "mirror_rest", "mirror_grpc"])
    for kind in names.KINDS:
        primary = names.runtime_cluster(kind, "default", 0)
        fb = clusters[names.fallback_cluster(primary)]
        assert fb == fallback_cluster(kind, primary, opts)
        assert as_dict(fb) == {
            "name": f"fb_{primary}", "connectTimeout": "0.500s", "lbPolicy": "CLUSTER_PROVIDED",
            "circuitBreakers": NO_LIMITS,
            "clusterType": {"name": "envoy.clusters.aggregate", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": [primary, f"activator_{kind}"]}}}
    per_revision = build_clusters(view, GatewayOptions(cluster_layout="per_revision"))[0]
    assert {"fb_rev_rest_m__1", "fb_rev_grpc_m__1"} <= set(per_revision)
    # without an activator nothing falls back (and there is no activator to fall back to)
    alone = build_clusters(MeshView.of(list(view.models.values())), opts)[0]
    assert sorted(alone) == ["mirror_grpc", "mirror_rest", "rt_grpc_default_0", "rt_rest_default_0"]
    alone = build_clusters(MeshView.of(list(view.models.values())),
                           GatewayOptions(cluster_layout="per_revision"))[0]
    assert sorted(alone) == ["mirror_grpc", "mirror_rest", "rev_grpc_m__1", "rev_rest_m__1"]


def test_the_activator_clusters_by_address_or_by_name() -> None:
    opts = GatewayOptions(connect_timeout_s=0.75)
    out = activator_clusters(ACT, opts)
    assert sorted(out) == ["activator_grpc", "activator_rest"]
    for kind, port in ((names.REST, 7000), (names.GRPC, 7001)):
        c = out[f"activator_{kind}"]
        expected = {
            "name": f"activator_{kind}", "type": "STATIC", "connectTimeout": "0.750s",
            "loadAssignment": {"clusterName": f"activator_{kind}", "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": {"socketAddress": {"address": "10.0.0.9", "portValue": port}}}}]}]}}
        if kind == names.GRPC:
            expected["typedExtensionProtocolOptions"] = H2
        assert as_dict(c) == expected
    named = activator_clusters(ActivatorEndpoint("msm.ns.svc", 7000, 7001), opts)
    assert {c.type for c in named.values()} == {cluster_pb2.Cluster.STRICT_DNS}
    v6 = activator_clusters(ActivatorEndpoint("::1", 7000, 7001), opts)
    assert {c.type for c in v6.values()} == {cluster_pb2.Cluster.STATIC}


def test_the_mirror_clusters_reach_the_gateways_own_internal_listener() -> None:
    out = mirror_clusters(GatewayOptions(connect_timeout_s=2.0))
    assert sorted(out) == ["mirror_grpc", "mirror_rest"]
    for kind in names.KINDS:
        expected = {
            "name": f"mirror_{kind}", "type": "STATIC", "connectTimeout": "2s",
            "loadAssignment": {"clusterName": f"mirror_{kind}", "endpoints": [{"lbEndpoints": [
                {"endpoint": {"address": {"envoyInternalAddress": {"serverListenerName": "msm_mirror"}}}}]}]}}
        if kind == names.GRPC:
            expected["typedExtensionProtocolOptions"] = H2
        assert as_dict(out[f"mirror_{kind}"]) == expected


def test_the_measure_cluster_only_under_its_own_name_and_with_an_endpoint() -> None:
    view = MeshView(models={}, measure=MeasureEndpoint("msm-0.msm", 18000))
    on = GatewayOptions(measure_cluster=names.MEASURE_CLUSTER, connect_timeout_s=0.5)
    c = build_clusters(view, on)[0][names.MEASURE_CLUSTER]
    assert as_dict(c) == {
        "name": "msm_measure", "type": "STRICT_DNS", "connectTimeout": "0.500s",
        "typedExtensionProtocolOptions": H2,
        "loadAssignment": {"clusterName": "msm_measure", "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {"address": "msm-0.msm", "portValue": 18000}}}}]}]}}
    # another name is a cluster of the gateway's bootstrap; no endpoint, no cluster
    assert names.MEASURE_CLUSTER not in build_clusters(view, GatewayOptions(measure_cluster="xds"))[0]
    assert names.MEASURE_CLUSTER not in build_clusters(MeshView(models={}), on)[0]
    by_address = MeshView(models={}, measure=MeasureEndpoint("10.0.0.7", 18000))
    assert build_clusters(by_address, on)[0][names.MEASURE_CLUSTER].type == cluster_pb2.Cluster.STATIC


def test_tls_to_the_runtimes_reads_its_certificate_and_trust_bundle_from_sds() -> None:
    tls = UpstreamTls(sds_cluster="sds-x", cert_secret="cert", validation_secret="ca", sni="rt.local")
    ctx = tls_context(tls_transport_socket(tls, names.GRPC))
    assert as_dict(ctx) == {
        "commonTlsContext": {
            "tlsCertificateSdsSecretConfigs": [{"name": "cert", "sdsConfig": SDS}],
            "combinedValidationContext": {
                "defaultValidationContext": {},
                "validationContextSdsSecretConfig": {"name": "ca", "sdsConfig": SDS}},
            "alpnProtocols": ["h2"]},
        "sni": "rt.local"}
    assert not tls_context(tls_transport_socket(tls, names.REST)).common_tls_context.alpn_protocols
    no_h2 = UpstreamTls(alpn_h2=False)
    assert not tls_context(tls_transport_socket(no_h2, names.GRPC)).common_tls_context.alpn_protocols
    assert tls_context(tls_transport_socket(no_h2, names.GRPC)).sni == ""
    san = tls_context(tls_transport_socket(tls, names.REST, "spiffe://td/ns/a/sa/")).common_tls_context
    assert as_dict(san.combined_validation_context.default_validation_context) == {
        "matchTypedSubjectAltNames": [{"sanType": "URI", "matcher": {"prefix": "spiffe://td/ns/a/sa/"}}]}


def test_the_spiffe_identities_a_runtime_may_have() -> None:
    assert spiffe_prefix(UpstreamTls(), "ns/rt") is None
    td = UpstreamTls(trust_domain="td.example")
    assert spiffe_prefix(td, "ns/rt") == "spiffe://td.example/ns/ns/sa/"
    assert spiffe_prefix(td, "ns/pool/x") == "spiffe://td.example/ns/ns/sa/"
    assert spiffe_prefix(td, "rt") == "spiffe://td.example/"


def test_plain_tls_is_on_every_copies_cluster_but_not_on_the_gateways_own() -> None:
    tls = UpstreamTls(sds_cluster="sds-x")
    view = MeshView.of([Model("m", (Revision("m__1", copies=(C0,)),))], ACT)
    for layout in ("subset", "per_revision"):
        clusters, _ = build_clusters(view, GatewayOptions(cluster_layout=layout, upstream_tls=tls))
        for name, c in clusters.items():
            copies = name.startswith(("rt_", "rev_"))
            assert c.HasField("transport_socket") is copies, name
            assert not c.transport_socket_matches, name
            if copies:
                ctx = tls_context(c.transport_socket)
                assert not ctx.common_tls_context.combined_validation_context.default_validation_context.\
                    match_typed_subject_alt_names  # no trust domain: any certificate of the bundle


def test_auto_mtls_chooses_the_socket_by_the_endpoints_mark() -> None:
    tls = UpstreamTls(sds_cluster="sds-x", trust_domain="td", auto=True)
    meshed = Copy("rt-0", "10.0.0.1", 8080, 8081, mesh_tls=True)
    view = MeshView.of([Model("m", (Revision("m__1", runtime="ns/rt", copies=(meshed, C1)),))])
    clusters, _ = build_clusters(view, GatewayOptions(subset_shards=1, upstream_tls=tls))
    for kind in names.KINDS:
        c = clusters[names.runtime_cluster(kind, "ns/rt", 0)]
        assert not c.HasField("transport_socket")
        istio, plain = c.transport_socket_matches
        assert (istio.name, json_format.MessageToDict(istio.match)) == ("tlsMode-istio", {"tlsMode": "istio"})
        assert istio.transport_socket == tls_transport_socket(tls, kind, "spiffe://td/ns/ns/sa/")
        assert plain.name == "tlsMode-disabled" and not plain.match.fields
        assert as_dict(plain.transport_socket) == {
            "name": "envoy.transport_sockets.raw_buffer",
            "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
