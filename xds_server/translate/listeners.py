"""The REST and gRPC listeners: HTTP connection managers, route discovery, local replies; and the
internal listener that takes mirrored requests (a VirtualService's ``mirror``) on to their model."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2 as al
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    substitution_format_string_pb2,
)
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import struct_pb2, wrappers_pb2

from xds_server.auth import GATEWAY_TOKEN_HEADER
from xds_server.translate import data_path, names
from xds_server.translate.common import ads_source, duration, pack
from xds_server.translate.options import GatewayOptions

HCM_FILTER = "envoy.filters.network.http_connection_manager"
NOT_FOUND_MESSAGE = "model not found"
NO_COPY_MESSAGE = "no ready copy of the model"
# gRPC status codes carried in the trailers-only local replies of the gRPC listener
GRPC_NOT_FOUND = "5"
GRPC_PERMISSION_DENIED = "7"
DENIED_MESSAGE = {
    names.REST: "only inference is served here: /v2/models/{name}[/versions/{v}][/infer|/ready]",
    names.GRPC: "only inference is served here: inference.GRPCInferenceService/"
                + "|".join(data_path.GRPC_METHODS),
}


def _flag_filter(*flags: str) -> al.AccessLogFilter:
    return al.AccessLogFilter(response_flag_filter=al.ResponseFlagFilter(flags=list(flags)))


def _json_format(fields: dict[str, str]) -> substitution_format_string_pb2.SubstitutionFormatString:
    s = struct_pb2.Struct()
    s.update(fields)
    return substitution_format_string_pb2.SubstitutionFormatString(json_format=s)


def _grpc_status(mapper: hcm.ResponseMapper, status: str, message: str) -> None:
    for key, value in (("grpc-status", status), ("grpc-message", message)):
        mapper.headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))


def local_reply_config(kind: str) -> hcm.LocalReplyConfig:
    """Every reply Envoy makes itself is JSON ``{"error": ...}``.

    No route (an unknown model) is 404 ``model not found``, with gRPC status NOT_FOUND on the
    gRPC listener; no healthy upstream or an unknown cluster (a model whose copies are gone) is 503.
    """
    not_found = hcm.ResponseMapper(
        filter=_flag_filter("NR"), status_code=wrappers_pb2.UInt32Value(value=404),
        body=base_pb2.DataSource(inline_string=NOT_FOUND_MESSAGE),
        # the transcoder rewrites :path to the gRPC method and keeps the client's in the header
        body_format_override=_json_format({"error": "%LOCAL_REPLY_BODY%",
                                           "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"}),
    )
    # the inference-only filter's refusal (the only 403 Envoy makes itself here)
    denied = hcm.ResponseMapper(
        filter=al.AccessLogFilter(status_code_filter=al.StatusCodeFilter(comparison=al.ComparisonFilter(
            op=al.ComparisonFilter.EQ, value=base_pb2.RuntimeUInt32(default_value=403, runtime_key="")))),
        body=base_pb2.DataSource(inline_string=DENIED_MESSAGE[kind]),
    )
    if kind == names.GRPC:
        _grpc_status(not_found, GRPC_NOT_FOUND, NOT_FOUND_MESSAGE)
        _grpc_status(denied, GRPC_PERMISSION_DENIED, DENIED_MESSAGE[kind])
    no_copy = hcm.ResponseMapper(
        filter=_flag_filter("UH", "NC"), status_code=wrappers_pb2.UInt32Value(value=503),
        body=base_pb2.DataSource(inline_string=NO_COPY_MESSAGE),
    )
    return hcm.LocalReplyConfig(
        mappers=[not_found, denied, no_copy],
        body_format=_json_format({"error": "%LOCAL_REPLY_BODY%"}),
    )


MEASURE_LOG = "msm"  # the access log service's log_name
#: CEL over the route's metadata: only the routes of revisions being compared are reported
MEASURE_EXPRESSION = (f"xds.route_metadata.filter_metadata['{names.MEASURE_METADATA}']"
                      f"['{names.MEASURE_KEY}'] == true")


def measure_log(opts: GatewayOptions) -> al.AccessLog:
    """Reports of measured routes' requests to msm's access log service (xds_server/access_log.py):
    batched, over the gateway's own stream to msm, with its token."""
    service = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=opts.measure_cluster or ""))
    if opts.measure_token:
        service.initial_metadata.append(
            base_pb2.HeaderValue(key=GATEWAY_TOKEN_HEADER, value=opts.measure_token))
    cfg = als_pb2.HttpGrpcAccessLogConfig(
        common_config=als_pb2.CommonGrpcAccessLogConfig(
            log_name=MEASURE_LOG, grpc_service=service, transport_api_version=config_source_pb2.V3,
            buffer_flush_interval=duration(0.2), buffer_size_bytes=wrappers_pb2.UInt32Value(value=16384)),
        additional_response_headers_to_log=["grpc-status"],  # a trailers-only gRPC answer
        additional_response_trailers_to_log=["grpc-status"])
    only = al.AccessLogFilter(extension_filter=al.ExtensionFilter(
        name="envoy.access_loggers.extension_filters.cel",
        typed_config=pack(cel_pb2.ExpressionFilter(expression=MEASURE_EXPRESSION))))
    return al.AccessLog(name="envoy.access_loggers.http_grpc", filter=only, typed_config=pack(cfg))


def http_connection_manager(kind: str, opts: GatewayOptions) -> hcm.HttpConnectionManager:
    m = hcm.HttpConnectionManager(
        stat_prefix=names.VHOST[kind],
        codec_type=hcm.HttpConnectionManager.AUTO,
        # routes and the inference-only filter see /a/../b as /b, //x as /x; %2F is refused
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=hcm.HttpConnectionManager.REJECT_REQUEST,
        http_filters=(data_path.rest_http_filters(opts) if kind == names.REST
                      else data_path.grpc_http_filters(opts)),
        local_reply_config=local_reply_config(kind),
    )
    if opts.measure_cluster:
        m.access_log.append(measure_log(opts))
    if opts.route_layout == "scoped":
        if kind == names.REST:  # /v2/models/<name>/... split by "/" -> ["", "v2", "models", "<name>", ...]
            extractor = hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
                name=":path", element_separator="/", index=3)
        else:
            extractor = hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
                name=names.MODEL_HEADER, element_separator="\n", index=0)
        tag = hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
            name=":path", element_separator="/", index=1)  # names.SCOPE_TAG[kind]
        m.scoped_routes.CopyFrom(hcm.ScopedRoutes(
            name=names.LISTENER[kind],
            scope_key_builder=hcm.ScopedRoutes.ScopeKeyBuilder(fragments=[
                hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder(header_value_extractor=extractor),
                hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder(header_value_extractor=tag)]),
            rds_config_source=ads_source(),
            scoped_rds=hcm.ScopedRds(scoped_rds_config_source=ads_source()),
        ))
    else:
        m.rds.CopyFrom(hcm.Rds(config_source=ads_source(), route_config_name=names.flat_route_config(kind)))
    return m


def mirror_listener() -> listener_pb2.Listener:
    """An Envoy internal listener (no socket): a rule's shadow requests arrive here with the model
    that takes them in ``x-msm-mirror``; its routes (RDS ``msm_mirror``) rewrite the model name for
    that model's revision and send them on. Their answers are dropped by the router that mirrored."""
    m = hcm.HttpConnectionManager(
        stat_prefix=names.MIRROR_LISTENER, codec_type=hcm.HttpConnectionManager.AUTO,
        http_filters=data_path.mirror_http_filters(),
        rds=hcm.Rds(config_source=ads_source(), route_config_name=names.MIRROR_ROUTE))
    return listener_pb2.Listener(
        name=names.MIRROR_LISTENER, internal_listener=listener_pb2.Listener.InternalListenerConfig(),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name=HCM_FILTER, typed_config=pack(m))])])


def build_listeners(opts: GatewayOptions) -> dict[str, listener_pb2.Listener]:
    out = {names.MIRROR_LISTENER: mirror_listener()}
    for kind in names.KINDS:
        name = names.LISTENER[kind]
        port = opts.rest_port if kind == names.REST else opts.grpc_port
        out[name] = listener_pb2.Listener(
            name=name,
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(
                address=opts.listen_address, port_value=port)),
            filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
                name=HCM_FILTER, typed_config=pack(http_connection_manager(kind, opts)))])],
        )
    return out
