"""The listeners' configuration, field for field: what the real-Envoy tests show working (local
replies, path normalisation, scoped routes, the measure log) pinned where it is produced, since
the mutation run starts no Envoy."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2 as al
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf import json_format

from xds_server.auth import GATEWAY_TOKEN_HEADER
from xds_server.translate import data_path, names
from xds_server.translate.listeners import (
    DENIED_MESSAGE,
    HCM_FILTER,
    MEASURE_EXPRESSION,
    build_listeners,
    http_connection_manager,
    local_reply_config,
)
from xds_server.translate.options import GatewayOptions

ADS = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                     resource_api_version=config_source_pb2.V3)


def _hcm(listener) -> hcm.HttpConnectionManager:
    (chain,) = listener.filter_chains
    (f,) = chain.filters
    assert f.name == HCM_FILTER
    m = hcm.HttpConnectionManager()
    assert f.typed_config.Unpack(m)
    return m


def _headers(mapper: hcm.ResponseMapper) -> list[tuple[str, str, int]]:
    return [(h.header.key, h.header.value, h.append_action) for h in mapper.headers_to_add]


def test_the_listeners_their_addresses_and_the_internal_mirror_listener():
    out = build_listeners(GatewayOptions(rest_port=9001, grpc_port=9002, listen_address="127.0.0.9"))
    assert sorted(out) == sorted([names.MIRROR_LISTENER, *names.LISTENER.values()])
    for kind, port in ((names.REST, 9001), (names.GRPC, 9002)):
        listener = out[names.LISTENER[kind]]
        assert listener.name == names.LISTENER[kind]
        sa = listener.address.socket_address
        assert (sa.address, sa.port_value) == ("127.0.0.9", port)
        assert _hcm(listener).stat_prefix == names.VHOST[kind]
    mirror = out[names.MIRROR_LISTENER]
    assert mirror.name == names.MIRROR_LISTENER and mirror.HasField("internal_listener")
    assert not mirror.HasField("address")
    m = _hcm(mirror)
    assert (m.stat_prefix, m.rds.route_config_name, m.rds.config_source) == (
        names.MIRROR_LISTENER, names.MIRROR_ROUTE, ADS)
    assert m.codec_type == hcm.HttpConnectionManager.AUTO


def test_each_listener_has_its_own_filter_chain():
    opts = GatewayOptions(max_request_bytes=1234)
    assert list(http_connection_manager(names.REST, opts).http_filters) == data_path.rest_http_filters(opts)
    assert list(http_connection_manager(names.GRPC, opts).http_filters) == data_path.grpc_http_filters(opts)
    assert data_path.rest_http_filters(opts) != data_path.grpc_http_filters(opts)
    mirror = _hcm(build_listeners(opts)[names.MIRROR_LISTENER])
    assert list(mirror.http_filters) == data_path.mirror_http_filters()


def test_paths_are_normalised_and_escaped_slashes_refused_on_both_listeners():
    for kind in names.KINDS:
        m = http_connection_manager(kind, GatewayOptions())
        assert m.codec_type == hcm.HttpConnectionManager.AUTO
        assert m.normalize_path.value is True and m.merge_slashes is True
        assert m.path_with_escaped_slashes_action == hcm.HttpConnectionManager.REJECT_REQUEST
        assert not m.access_log  # no measure cluster: nothing is reported


def test_local_replies_on_the_rest_listener():
    cfg = local_reply_config(names.REST)
    not_found, denied, no_copy = cfg.mappers
    assert list(not_found.filter.response_flag_filter.flags) == ["NR"]
    assert (not_found.status_code.value, not_found.body.inline_string) == (404, "model not found")
    assert json_format.MessageToDict(not_found.body_format_override.json_format) == {
        "error": "%LOCAL_REPLY_BODY%", "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"}
    cmp = denied.filter.status_code_filter.comparison
    assert (cmp.op, cmp.value.default_value, cmp.value.runtime_key) == (al.ComparisonFilter.EQ, 403, "")
    assert denied.body.inline_string == DENIED_MESSAGE[names.REST]
    assert not denied.HasField("status_code")  # stays 403
    assert list(no_copy.filter.response_flag_filter.flags) == ["UH", "NC"]
    assert (no_copy.status_code.value, no_copy.body.inline_string) == (503, "no ready copy of the model")
    assert json_format.MessageToDict(cfg.body_format.json_format) == {"error": "%LOCAL_REPLY_BODY%"}
    assert not _headers(not_found) and not _headers(denied)  # gRPC statuses only on the gRPC listener


def test_local_replies_on_the_grpc_listener_carry_grpc_statuses():
    not_found, denied, no_copy = local_reply_config(names.GRPC).mappers
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert _headers(not_found) == [("grpc-status", "5", overwrite),
                                   ("grpc-message", "model not found", overwrite)]
    assert _headers(denied) == [("grpc-status", "7", overwrite),
                                ("grpc-message", DENIED_MESSAGE[names.GRPC], overwrite)]
    assert DENIED_MESSAGE[names.GRPC].startswith(
        "only inference is served here: inference.GRPCInferenceService/")
    assert not _headers(no_copy)


def test_measured_routes_are_reported_over_the_gateways_own_stream_with_its_token():
    opts = GatewayOptions(measure_cluster="msm_measure", measure_token="tok")
    for kind in names.KINDS:
        (log,) = http_connection_manager(kind, opts).access_log
        assert log.name == "envoy.access_loggers.http_grpc"
        cel = cel_pb2.ExpressionFilter()
        assert log.filter.extension_filter.name == "envoy.access_loggers.extension_filters.cel"
        assert log.filter.extension_filter.typed_config.Unpack(cel)
        assert cel.expression == MEASURE_EXPRESSION
        cfg = als_pb2.HttpGrpcAccessLogConfig()
        assert log.typed_config.Unpack(cfg)
        common = cfg.common_config
        assert (common.log_name, common.transport_api_version) == ("msm", config_source_pb2.V3)
        assert common.grpc_service.envoy_grpc.cluster_name == "msm_measure"
        token = [(h.key, h.value) for h in common.grpc_service.initial_metadata]
        assert token == [(GATEWAY_TOKEN_HEADER, "tok")]
        assert (common.buffer_flush_interval.ToMilliseconds(), common.buffer_size_bytes.value) == (200, 16384)
        assert list(cfg.additional_response_headers_to_log) == ["grpc-status"]
        assert list(cfg.additional_response_trailers_to_log) == ["grpc-status"]
    (log,) = http_connection_manager(names.REST, GatewayOptions(measure_cluster="m")).access_log
    cfg = als_pb2.HttpGrpcAccessLogConfig()
    log.typed_config.Unpack(cfg)
    assert not cfg.common_config.grpc_service.initial_metadata  # no token, no header


def test_scoped_routes_key_on_the_model_name_and_the_path_tag():
    Extractor = hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor
    for kind, first in ((names.REST, Extractor(name=":path", element_separator="/", index=3)),
                        (names.GRPC, Extractor(name=names.MODEL_HEADER, element_separator="\n", index=0))):
        m = http_connection_manager(kind, GatewayOptions(route_layout="scoped"))
        assert not m.HasField("rds")
        s = m.scoped_routes
        assert s.name == names.LISTENER[kind]
        fragments = [f.header_value_extractor for f in s.scope_key_builder.fragments]
        assert fragments == [first, Extractor(name=":path", element_separator="/", index=1)]
        assert s.rds_config_source == ADS and s.scoped_rds.scoped_rds_config_source == ADS


def test_the_flat_layout_names_one_route_table_per_listener():
    for kind in names.KINDS:
        m = http_connection_manager(kind, GatewayOptions(route_layout="flat"))
        assert not m.HasField("scoped_routes")
        assert (m.rds.route_config_name, m.rds.config_source) == (names.flat_route_config(kind), ADS)
