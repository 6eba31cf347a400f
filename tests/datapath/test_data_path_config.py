"""data_path's Envoy config, without processes: names, metadata, descriptor set, Lua sources."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from google.protobuf import descriptor_pb2

from xds_server.translate import data_path as dp
from xds_server.translate import names, routes


def test_rest_filters_in_order_router_last():
    names = [f.name for f in dp.rest_http_filters(None)]
    # the fault filter sees the final route (after the classifier), before transcoding
    # a sticky split's bucket first (both it and the classifier look the route up again), then the
    # fault filter on the final route, before transcoding; the direct replays' stateful session
    # filter just before the router, on the final route
    assert names == [dp.INFERENCE_ONLY_FILTER, dp.STICKY_FILTER, dp.CLASSIFY_FILTER, dp.FAULT_FILTER,
                     dp.TRANSCODER_FILTER, dp.REWRITE_FILTER, dp.DIRECT_FILTER, dp.ROUTER_FILTER]
    assert [f.name for f in dp.grpc_http_filters(None)] == [
        dp.INFERENCE_ONLY_FILTER, dp.STICKY_FILTER, dp.FAULT_FILTER, dp.REWRITE_FILTER, dp.DIRECT_FILTER,
        dp.ROUTER_FILTER]
    # the sticky filter is off unless a route turns it on: no other request pays for it
    assert [f.disabled for f in dp.rest_http_filters(None) if f.name == dp.STICKY_FILTER] == [True]


def test_transcoder_config_is_self_contained_and_skips_marked_bodies():
    f = next(f for f in dp.rest_http_filters(None) if f.name == dp.TRANSCODER_FILTER)
    wrapped = extension_matcher_pb2.ExtensionWithMatcher()
    assert f.typed_config.Unpack(wrapped)
    t = transcoder_pb2.GrpcJsonTranscoder()
    assert wrapped.extension_config.typed_config.Unpack(t)
    assert list(t.services) == [dp.INFERENCE_SERVICE] and t.match_incoming_request_route
    assert not t.print_options.preserve_proto_field_names  # camelCase: modelName, int64Contents
    fds = descriptor_pb2.FileDescriptorSet.FromString(t.proto_descriptor_bin)
    names = [fd.name for fd in fds.file]
    assert names[-1] == "inference_v2.proto"
    deps = {"google/api/http.proto", "google/api/annotations.proto", "google/protobuf/descriptor.proto"}
    assert deps <= set(names)
    for fd in fds.file:  # every import comes before its importer
        assert all(names.index(dep) < names.index(fd.name) for dep in fd.dependency)
    pred = wrapped.xds_matcher.matcher_list.matchers[0].predicate.single_predicate
    assert pred.value_match.exact == dp.REST_BODY_DATA


def test_max_request_size_follows_options():
    class Opts:
        max_request_bytes = 1234

    assert dp.transcoder_config(Opts()).max_request_body_size.value == 1234


def test_route_metadata_is_read_under_the_rewrite_filter_name():
    md = dp.route_target_metadata("m__isvc-1")
    assert md.filter_metadata[dp.REWRITE_FILTER][dp.TARGET_KEY] == "m__isvc-1"


def test_transcoding_per_route():
    assert dp.transcoding_per_route(True) == {}
    off = dp.transcoding_per_route(False)
    assert set(off) == {dp.TRANSCODER_FILTER, dp.CLASSIFY_FILTER}
    for cfg in off.values():
        fc = rc.FilterConfig()
        assert cfg.Unpack(fc) and fc.disabled


def test_lua_sources_use_the_python_names():
    lua = lua_pb2.Lua()
    by_name = {f.name: f for f in dp.rest_http_filters(None)}
    classify, rewrite = by_name[dp.CLASSIFY_FILTER], by_name[dp.REWRITE_FILTER]
    sticky = by_name[dp.STICKY_FILTER]
    assert classify.typed_config.Unpack(lua)
    src = lua.default_source_code.inline_string
    assert f'"{dp.REST_BODY_HEADER}"' in src and f'"{dp.REST_BODY_DATA}"' in src
    assert lua.clear_route_cache.value is True
    assert rewrite.typed_config.Unpack(lua)
    assert f'"{dp.TARGET_KEY}"' in lua.default_source_code.inline_string
    assert lua.clear_route_cache.value is False  # a transcoded path must not be routed again
    assert sticky.typed_config.Unpack(lua)
    src = lua.default_source_code.inline_string
    assert f'"{names.BUCKET_HEADER}"' in src and f"BUCKETS = {routes.BUCKETS}" in src
    assert f'get("{dp.STICKY_HEADER_KEY}")' in src and lua.clear_route_cache.value is True


def test_generated_module_lives_in_a_private_pool():
    """msm's inference_v2 can be imported beside MLServer's or tritonclient's `inference` protos."""
    import tritonclient.grpc.service_pb2  # noqa: F401  registers inference.* in the default pool

    from xds_server.protos import inference_v2_pb2 as pb

    msg = pb.ModelInferRequest(model_name="a")
    assert msg.SerializeToString() == b"\n\x01a"
