"""Clusters and their endpoints (CDS + EDS) for both cluster layouts."""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from xds_server.mesh_view import ActivatorEndpoint, MeshView, Model
from xds_server.translate import names
from xds_server.translate.common import ads_source, duration, pack
from xds_server.translate.options import GatewayOptions, MeasureTls, UpstreamTls

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_BIG = 1_000_000  # circuit breakers: a shared runtime cluster must not cap models at Envoy's default 1024
#: A copies' cluster takes all of its traffic while any copy in it is healthy. Envoy's default
#: (1.4) would spill a share to the next priority (the fallback cluster's activator) as soon as
#: copies are ejected: 30 % with one of two ejected. 1000x: one healthy copy in a thousand is enough.
OVERPROVISIONING_FACTOR = 100_000
AGGREGATE = "envoy.clusters.aggregate"


def _no_limits() -> circuit_breaker_pb2.CircuitBreakers:
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[
        circuit_breaker_pb2.CircuitBreakers.Thresholds(
            max_connections=wrappers_pb2.UInt32Value(value=_BIG),
            max_pending_requests=wrappers_pb2.UInt32Value(value=_BIG),
            max_requests=wrappers_pb2.UInt32Value(value=_BIG),
            max_retries=wrappers_pb2.UInt32Value(value=_BIG),
        )])


def _socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def _sds_config(opts: UpstreamTls) -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=config_source_pb2.V3,
            grpc_services=[grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=opts.sds_cluster))],
        ),
        resource_api_version=config_source_pb2.V3,
    )


def spiffe_prefix(tls: UpstreamTls, runtime: str) -> str | None:
    """The SPIFFE identities a runtime's pods may have: its namespace's in the trust domain."""
    if tls.trust_domain is None:
        return None
    ns, sep, _ = runtime.partition("/")
    return f"spiffe://{tls.trust_domain}/ns/{ns}/sa/" if sep else f"spiffe://{tls.trust_domain}/"


def _alpn(tls: UpstreamTls, kind: str) -> list[str]:
    if tls.trust_domain is not None:
        return ["istio-h2"] if kind == names.GRPC else ["istio-http/1.1"]
    return ["h2"] if (kind == names.GRPC and tls.alpn_h2) else []


def tls_transport_socket(tls: UpstreamTls, kind: str,
                         san_prefix: str | None = None) -> base_pb2.TransportSocket:
    """An upstream TLS socket whose certificate and trust bundle are SDS secrets; with
    ``san_prefix``, the peer's certificate must carry a URI SAN that starts with it."""
    sds = _sds_config(tls)
    validation = tls_common_pb2.CertificateValidationContext()
    if san_prefix is not None:
        validation.match_typed_subject_alt_names.append(tls_common_pb2.SubjectAltNameMatcher(
            san_type=tls_common_pb2.SubjectAltNameMatcher.URI,
            matcher=string_pb2.StringMatcher(prefix=san_prefix)))
    ctx = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[
                secret_pb2.SdsSecretConfig(name=tls.cert_secret, sds_config=sds)],
            combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
                default_validation_context=validation,
                validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(
                    name=tls.validation_secret, sds_config=sds),
            ),
            alpn_protocols=_alpn(tls, kind),
        ),
        sni=tls.sni or "",
    )
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(ctx))


def _prototype(kind: str, opts: GatewayOptions, subset: bool) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration(opts.connect_timeout_s),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        outlier_detection=outlier_detection_pb2.OutlierDetection(
            # connection failures, resets and 502/503/504 of a copy; 500s are the model's answer
            # (a bad input) and must not eject an instance that serves many models
            consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=opts.outlier_consecutive_gateway_failure),
            enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
            enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=0),
            enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
            interval=duration(opts.outlier_interval_s),
            base_ejection_time=duration(opts.outlier_base_ejection_s),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=opts.outlier_max_ejection_percent),
        ),
        circuit_breakers=_no_limits(),
    )
    c.eds_cluster_config.eds_config.CopyFrom(ads_source())
    if kind == names.GRPC:
        _speak_h2(c)
    if subset:
        c.lb_subset_config.CopyFrom(cluster_pb2.Cluster.LbSubsetConfig(
            fallback_policy=cluster_pb2.Cluster.LbSubsetConfig.NO_FALLBACK,
            subset_selectors=[cluster_pb2.Cluster.LbSubsetConfig.LbSubsetSelector(keys=[names.SUBSET_KEY])],
            list_as_any=True,
        ))
    if opts.upstream_tls is not None and not opts.upstream_tls.auto:
        c.transport_socket.CopyFrom(tls_transport_socket(opts.upstream_tls, kind))
    return c


def _auto_mtls(socket: base_pb2.TransportSocket) -> list[cluster_pb2.Cluster.TransportSocketMatch]:
    """Istio's auto mTLS: endpoints marked ``tlsMode: istio`` get ``socket``, the others plaintext."""
    istio = cluster_pb2.Cluster.TransportSocketMatch(name="tlsMode-istio", transport_socket=socket)
    istio.match.fields["tlsMode"].string_value = "istio"
    plain = cluster_pb2.Cluster.TransportSocketMatch(
        name="tlsMode-disabled", match=struct_pb2.Struct(), transport_socket=base_pb2.TransportSocket(
            name="envoy.transport_sockets.raw_buffer", typed_config=pack(raw_buffer_pb2.RawBuffer())))
    return [istio, plain]


def _mesh_tls(opts: GatewayOptions, copy_takes_it: bool) -> bool:
    """Whether an endpoint is marked for the mTLS transport socket (auto mTLS only)."""
    return copy_takes_it and opts.upstream_tls is not None and opts.upstream_tls.auto


def _lb_endpoint(host: str, port: int, revisions: list[str] | None = None,
                 mesh_tls: bool = False) -> endpoint_components_pb2.LbEndpoint:
    ep = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=_socket_address(host, port)))
    if mesh_tls:  # selects the cluster's Istio mTLS transport socket, as Istio's tlsMode label does
        ep.metadata.filter_metadata[names.TRANSPORT_SOCKET_MATCH].fields["tlsMode"].string_value = "istio"
    if revisions is not None:
        values = ep.metadata.filter_metadata[names.LB_METADATA].fields[names.SUBSET_KEY].list_value.values
        values.extend(struct_pb2.Value(string_value=r) for r in revisions)
    return ep


def _cla(name: str,
         endpoints: list[endpoint_components_pb2.LbEndpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    locality = endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=endpoints)
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[locality])


def _copies_cla(name: str,
                endpoints: list[endpoint_components_pb2.LbEndpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    cla = _cla(name, endpoints)
    cla.policy.overprovisioning_factor.value = OVERPROVISIONING_FACTOR
    return cla


def fallback_cluster(kind: str, primary: str, opts: GatewayOptions) -> cluster_pb2.Cluster:
    """An aggregate cluster: ``primary`` (copies) first, the activator next. Routes to copies name
    it, and their retry policy moves to the next priority once the copies have failed (see
    ``routes._retry``): a request whose every copy is gone (killed) is held by the activator while
    the model loads elsewhere, instead of failing until the health checks notice."""
    config = aggregate_pb2.ClusterConfig(clusters=[primary, names.activator_cluster(kind)])
    return cluster_pb2.Cluster(
        name=names.fallback_cluster(primary), connect_timeout=duration(opts.connect_timeout_s),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_pb2.Cluster.CustomClusterType(name=AGGREGATE, typed_config=pack(config)),
        circuit_breakers=_no_limits())


def _port(kind: str, rest_port: int, grpc_port: int) -> int:
    return rest_port if kind == names.REST else grpc_port


def _speak_h2(c: cluster_pb2.Cluster) -> None:
    """Upstream HTTP/2 (gRPC) on ``c``."""
    http = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
    c.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(http))


def _discovery(address: str) -> cluster_pb2.Cluster.DiscoveryType.ValueType:
    """STATIC for an IP address, STRICT_DNS for a name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return cluster_pb2.Cluster.STRICT_DNS
    return cluster_pb2.Cluster.STATIC


def activator_clusters(activator: ActivatorEndpoint, opts: GatewayOptions) -> dict[str, cluster_pb2.Cluster]:
    """Static clusters to msm's activator (no TLS: it runs beside the control plane)."""
    out = {}
    for kind in names.KINDS:
        name = names.activator_cluster(kind)
        c = cluster_pb2.Cluster(name=name, type=_discovery(activator.address),
                                connect_timeout=duration(opts.connect_timeout_s))
        c.load_assignment.CopyFrom(_cla(name, [_lb_endpoint(
            activator.address, _port(kind, activator.rest_port, activator.grpc_port))]))
        if kind == names.GRPC:
            _speak_h2(c)
        out[name] = c
    return out


def measure_clusters(view: MeshView, opts: GatewayOptions) -> dict[str, cluster_pb2.Cluster]:
    """The cluster to the control plane's access log service (HTTP/2, as its xDS port speaks);
    with ``opts.measure_tls``, mutual TLS to its measure port."""
    m = view.measure
    if m is None or opts.measure_cluster != names.MEASURE_CLUSTER:
        return {}
    port = opts.measure_tls.port if opts.measure_tls is not None else m.port
    c = cluster_pb2.Cluster(name=names.MEASURE_CLUSTER, type=_discovery(m.address),
                            connect_timeout=duration(opts.connect_timeout_s))
    c.load_assignment.CopyFrom(_cla(names.MEASURE_CLUSTER, [_lb_endpoint(m.address, port)]))
    _speak_h2(c)
    if opts.measure_tls is not None:
        c.transport_socket.CopyFrom(_measure_tls_socket(opts.measure_tls))
    return {names.MEASURE_CLUSTER: c}


def _measure_tls_socket(t: MeasureTls) -> base_pb2.TransportSocket:
    """The gateway's workload certificate from its agent (SDS); msm's certificate checked against
    msm's CA and its DNS name."""
    sds = _sds_config(UpstreamTls(sds_cluster=t.sds_cluster))
    validation = tls_common_pb2.CertificateValidationContext(
        trusted_ca=base_pb2.DataSource(inline_string=t.ca_pem),
        match_typed_subject_alt_names=[tls_common_pb2.SubjectAltNameMatcher(
            san_type=tls_common_pb2.SubjectAltNameMatcher.DNS,
            matcher=string_pb2.StringMatcher(exact=t.server_name))])
    cert = secret_pb2.SdsSecretConfig(name=t.cert_secret, sds_config=sds)
    ctx = tls_pb2.UpstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificate_sds_secret_configs=[cert], validation_context=validation, alpn_protocols=["h2"]),
        sni=t.server_name)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(ctx))


def mirror_clusters(opts: GatewayOptions) -> dict[str, cluster_pb2.Cluster]:
    """Static clusters to the gateway's own internal mirror listener (REST, and gRPC over HTTP/2)."""
    out = {}
    for kind in names.KINDS:
        name = names.mirror_cluster(kind)
        c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC,
                                connect_timeout=duration(opts.connect_timeout_s))
        c.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(envoy_internal_address=address_pb2.EnvoyInternalAddress(
                        server_listener_name=names.MIRROR_LISTENER))))])]))
        if kind == names.GRPC:
            _speak_h2(c)
        out[name] = c
    return out


# instance -> (address, rest, grpc, takes Istio mTLS, [revision ids])
Hosts = dict[str, tuple[str, int, int, bool, list[str]]]


def subset_groups(view: MeshView, opts: GatewayOptions) -> dict[tuple[str, int], Hosts]:
    """(runtime, shard) → the instances of that group and the revisions each holds.

    A group exists while any model of the view falls in it, copies or not: its clusters are then
    in the gateway before a cold model's first copy needs them, and that copy's routes change
    only endpoints and routes (a new cluster would first have to warm, an xDS round trip more
    on the cold request's path)."""
    groups: dict[tuple[str, int], Hosts] = defaultdict(dict)
    for model in view.models.values():
        shard = names.shard_of(model.name, opts.subset_shards)
        for rev in model.own_revisions():
            hosts = groups[(rev.runtime, shard)]
            for cp in rev.copies:
                entry = hosts.get(cp.instance)
                if entry is None:
                    entry = hosts[cp.instance] = (cp.address, cp.rest_port, cp.grpc_port, cp.mesh_tls, [])
                entry[4].append(rev.id)
    return groups


class _Builder:
    def __init__(self, opts: GatewayOptions, fallback: bool, subset: bool | None = None) -> None:
        subset = opts.cluster_layout == "subset" if subset is None else subset
        self.opts = opts
        self.fallback = fallback
        self.protos = {kind: _prototype(kind, opts, subset) for kind in names.KINDS}
        self.clusters: dict[str, cluster_pb2.Cluster] = {}
        self.clas: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}

    def add(self, kind: str, name: str, endpoints: list[endpoint_components_pb2.LbEndpoint],
            runtime: str) -> None:
        c = cluster_pb2.Cluster()
        c.CopyFrom(self.protos[kind])
        c.name = name
        tls = self.opts.upstream_tls
        if tls is not None and (tls.auto or tls.trust_domain is not None):
            socket = tls_transport_socket(tls, kind, spiffe_prefix(tls, runtime))
            if tls.auto:
                c.transport_socket_matches.extend(_auto_mtls(socket))
            else:
                c.transport_socket.CopyFrom(socket)
        self.clusters[name] = c
        self.clas[name] = _copies_cla(name, endpoints)
        if self.fallback:
            self.clusters[names.fallback_cluster(name)] = fallback_cluster(kind, name, self.opts)


def group_clusters(runtime: str, shard: int, hosts: Hosts, opts: GatewayOptions,
                   fallback: bool = False) -> tuple[
        dict[str, cluster_pb2.Cluster], dict[str, endpoint_pb2.ClusterLoadAssignment]]:
    """The REST and gRPC clusters of one (runtime, shard) group, endpoints listing revisions
    (with ``fallback``, each with its :func:`fallback_cluster`)."""
    b = _Builder(opts, fallback)
    for kind in names.KINDS:
        eps = [_lb_endpoint(addr, _port(kind, rest, grpc), sorted(revs), _mesh_tls(opts, mtls))
               for _, (addr, rest, grpc, mtls, revs) in sorted(hosts.items())]
        b.add(kind, names.runtime_cluster(kind, runtime, shard), eps, runtime)
    return b.clusters, b.clas


def model_revision_clusters(model: Model, opts: GatewayOptions, fallback: bool = False) -> tuple[
        dict[str, cluster_pb2.Cluster], dict[str, endpoint_pb2.ClusterLoadAssignment]]:
    """Per-revision layout: a REST and a gRPC cluster per revision with a ready copy (with
    ``fallback``, each with its :func:`fallback_cluster`)."""
    b = _Builder(opts, fallback)
    for rev in model.own_revisions():
        if not rev.copies:
            continue
        for kind in names.KINDS:
            eps = [_lb_endpoint(cp.address, _port(kind, cp.rest_port, cp.grpc_port), None,
                                _mesh_tls(opts, cp.mesh_tls))
                   for cp in sorted(rev.copies, key=lambda c: c.instance)]
            b.add(kind, names.revision_cluster(kind, rev.id), eps, rev.runtime)
    return b.clusters, b.clas


def direct_clusters(view: MeshView, opts: GatewayOptions) -> tuple[
        dict[str, cluster_pb2.Cluster], dict[str, endpoint_pb2.ClusterLoadAssignment]]:
    """Per runtime, a REST and a gRPC cluster of every instance of it that is up
    (``view.runtime_instances``): where the activator's direct replays go, to the instance their
    header names (routes.py's direct routes; no subsets). A copy just loaded is in them already:
    its load changes nothing here."""
    if not opts.direct_replays(view.activator):
        return {}, {}
    b = _Builder(opts, fallback=False, subset=False)
    for runtime, instances in sorted(view.runtime_instances.items()):
        for kind in names.KINDS:
            eps = [_lb_endpoint(i.address, _port(kind, i.rest_port, i.grpc_port), None,
                                _mesh_tls(opts, i.mesh_tls))
                   for i in sorted(instances, key=lambda i: i.instance)]
            b.add(kind, names.direct_cluster(kind, runtime), eps, runtime)
    return b.clusters, b.clas


def build_clusters(view: MeshView, opts: GatewayOptions) -> tuple[
        dict[str, cluster_pb2.Cluster], dict[str, endpoint_pb2.ClusterLoadAssignment]]:
    """Clusters (EDS over ADS) and their ClusterLoadAssignments for the chosen layout.

    Only revisions with a ready copy get upstream endpoints; routes never name anything else.
    """
    clusters: dict[str, cluster_pb2.Cluster] = {}
    clas: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    fallback = view.activator is not None
    if opts.cluster_layout == "subset":
        for (runtime, shard), hosts in sorted(subset_groups(view, opts).items()):
            c, e = group_clusters(runtime, shard, hosts, opts, fallback)
            clusters.update(c)
            clas.update(e)
    else:
        for model in view.models.values():
            c, e = model_revision_clusters(model, opts, fallback)
            clusters.update(c)
            clas.update(e)
    if view.activator is not None:
        clusters.update(activator_clusters(view.activator, opts))
        c, e = direct_clusters(view, opts)
        clusters.update(c)
        clas.update(e)
    clusters.update(mirror_clusters(opts))
    clusters.update(measure_clusters(view, opts))
    return clusters, clas
