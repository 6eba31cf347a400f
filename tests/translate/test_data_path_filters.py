"""The data path's filter configuration, field by field where each field is a decision of
docs/data-path.md (the real-Envoy tests show the behaviour; these pin what produces it)."""

from __future__ import annotations

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2

from xds_server.translate import data_path as dp
from xds_server.translate.options import GatewayOptions


def unpack(filt, cls):
    msg = cls()
    assert filt.typed_config.Unpack(msg), (filt.name, cls)
    return msg


def test_the_transcoder_answers_in_the_articles_shape_within_the_gateways_size_limit() -> None:
    t = dp.transcoder_config(GatewayOptions(max_request_bytes=1 << 20))
    assert list(t.services) == [dp.INFERENCE_SERVICE] and t.match_incoming_request_route
    p = t.print_options  # protobuf's JSON defaults: "modelName", int64 as strings, unset fields left out
    assert not (p.add_whitespace or p.always_print_primitive_fields or p.always_print_enums_as_ints
                or p.preserve_proto_field_names)
    assert t.convert_grpc_status
    assert (t.max_request_body_size.value, t.max_response_body_size.value) == (1 << 20, 1 << 20)
    assert dp.transcoder_config().max_request_body_size.value == dp.DEFAULT_MAX_REQUEST_BYTES
    huge = dp.transcoder_config(GatewayOptions(max_request_bytes=5 << 30))  # more than a uint32
    assert (huge.max_request_body_size.value, huge.max_response_body_size.value) == (2**32 - 1, 2**32 - 1)


def test_each_listener_allows_its_inference_paths_and_nothing_else() -> None:
    for kind, filters in (("rest", dp.rest_http_filters()), ("grpc", dp.grpc_http_filters())):
        first = filters[0]
        assert first.name == dp.INFERENCE_ONLY_FILTER
        rules = unpack(first, rbac_filter_pb2.RBAC).rules
        assert rules.action == rbac_pb2.RBAC.ALLOW and list(rules.policies) == ["inference"]
        policy = rules.policies["inference"]
        assert [p.any for p in policy.principals] == [True]
        paths = [perm.url_path.path for perm in policy.permissions]
        if kind == "grpc":
            assert [p.exact for p in paths] == [f"/{dp.INFERENCE_SERVICE}/{m}" for m in dp.GRPC_METHODS]
        else:
            assert [p.safe_regex.regex for p in paths] == [dp.REST_PATHS]


def test_the_filter_chains_in_order() -> None:
    assert [f.name for f in dp.rest_http_filters()] == [
        dp.INFERENCE_ONLY_FILTER, dp.STICKY_FILTER, dp.CLASSIFY_FILTER, dp.FAULT_FILTER,
        dp.TRANSCODER_FILTER, dp.REWRITE_FILTER, dp.DIRECT_FILTER, dp.ROUTER_FILTER]
    assert [f.name for f in dp.grpc_http_filters()] == [
        dp.INFERENCE_ONLY_FILTER, dp.STICKY_FILTER, dp.FAULT_FILTER, dp.REWRITE_FILTER, dp.DIRECT_FILTER,
        dp.ROUTER_FILTER]
    assert [f.name for f in dp.mirror_http_filters()] == [dp.REWRITE_FILTER, dp.ROUTER_FILTER]
    by_name = {f.name: f for f in dp.rest_http_filters()}
    # the classifier looks the route up again (a marked body goes to the REST port); the rewrite
    # after transcoding must not (the path is the gRPC method's by then)
    assert unpack(by_name[dp.CLASSIFY_FILTER], lua_pb2.Lua).clear_route_cache.value is True
    assert unpack(by_name[dp.REWRITE_FILTER], lua_pb2.Lua).clear_route_cache.value is False
    # the sticky filter is off unless a route turns it on, and then looks the route up again
    sticky = by_name[dp.STICKY_FILTER]
    assert sticky.disabled and unpack(sticky, lua_pb2.Lua).clear_route_cache.value is True
    assert dp.STICKY_SOURCE in unpack(sticky, lua_pb2.Lua).source_codes
    # so is the direct replays' stateful session filter, which reads its header before the router
    # removes it
    for filters in (dp.rest_http_filters(), dp.grpc_http_filters()):
        assert {f.name for f in filters if f.disabled} == {dp.STICKY_FILTER, dp.DIRECT_FILTER}


def test_the_transcoder_is_skipped_for_bodies_the_classifier_marked() -> None:
    rest = {f.name: f for f in dp.rest_http_filters()}
    from envoy.extensions.common.matching.v3 import extension_matcher_pb2

    wrapped = unpack(rest[dp.TRANSCODER_FILTER], extension_matcher_pb2.ExtensionWithMatcher)
    (matcher,) = wrapped.xds_matcher.matcher_list.matchers
    single = matcher.predicate.single_predicate
    assert single.value_match.exact == dp.REST_BODY_DATA
    assert matcher.on_match.action.name == "msm.skip_transcoder"
    inner = transcoder_pb2.GrpcJsonTranscoder()
    assert wrapped.extension_config.typed_config.Unpack(inner)
    assert list(inner.services) == [dp.INFERENCE_SERVICE]


def test_each_lua_filter_runs_its_shipped_script_and_only_the_classifier_reroutes() -> None:
    scripts = {dp.CLASSIFY_FILTER: "classify_body.lua", dp.REWRITE_FILTER: "rewrite_model.lua",
               dp.STICKY_FILTER: "sticky_bucket.lua"}
    for chain in (dp.rest_http_filters(), dp.grpc_http_filters(), dp.mirror_http_filters()):
        for f in chain:
            if f.name in scripts:
                lua = unpack(f, lua_pb2.Lua)
                assert lua.default_source_code.inline_string == dp.lua_source(scripts[f.name]), f.name
                assert lua.HasField("clear_route_cache"), f.name
                assert lua.clear_route_cache.value is (f.name != dp.REWRITE_FILTER), f.name
    assert dp.lua_source("rewrite_model.lua").strip()


def test_the_transcoder_skip_reads_the_classifiers_header() -> None:
    from envoy.extensions.common.matching.v3 import extension_matcher_pb2
    from envoy.type.matcher.v3 import http_inputs_pb2

    rest = {f.name: f for f in dp.rest_http_filters()}
    wrapped = unpack(rest[dp.TRANSCODER_FILTER], extension_matcher_pb2.ExtensionWithMatcher)
    (matcher,) = wrapped.xds_matcher.matcher_list.matchers
    given = matcher.predicate.single_predicate.input
    assert given.name == "msm.body_header"
    header = http_inputs_pb2.HttpRequestHeaderMatchInput()
    assert given.typed_config.Unpack(header)
    assert header.header_name == dp.REST_BODY_HEADER == "x-msm-body"


def test_the_rest_listeners_transcoder_takes_the_gateways_size_limit() -> None:
    from envoy.extensions.common.matching.v3 import extension_matcher_pb2

    rest = {f.name: f for f in dp.rest_http_filters(GatewayOptions(max_request_bytes=4321))}
    wrapped = unpack(rest[dp.TRANSCODER_FILTER], extension_matcher_pb2.ExtensionWithMatcher)
    inner = transcoder_pb2.GrpcJsonTranscoder()
    assert wrapped.extension_config.typed_config.Unpack(inner)
    assert wrapped.extension_config.name == dp.TRANSCODER_FILTER
    assert (inner.max_request_body_size.value, inner.max_response_body_size.value) == (4321, 4321)
