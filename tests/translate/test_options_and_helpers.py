"""GatewayOptions refuses what Envoy would reject or misread, at the exact boundary, with a message
naming the setting; the protobuf helpers every translation module uses."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import config_source_pb2
from google.protobuf import any_pb2, struct_pb2

from xds_server.translate.common import ads_source, duration, pack, typed_extension
from xds_server.translate.options import GatewayOptions

REFUSED = [
    ({"cluster_layout": "flat"}, "cluster_layout must be per_revision or subset, not 'flat'"),
    ({"route_layout": "subset"}, "route_layout must be scoped or flat, not 'subset'"),
    ({"subset_shards": 0}, "subset_shards must be >= 1"),
    ({"retries": -1}, "retries must be >= 0"),
    ({"rest_port": 0}, "rest_port must be a port number (1-65535), not 0"),
    ({"grpc_port": 65536}, "grpc_port must be a port number (1-65535), not 65536"),
    ({"rest_port": 9000, "grpc_port": 9000}, "the REST and gRPC ports must differ (both 9000)"),
    ({"listen_address": "localhost"}, "listen_address must be an IP address, not 'localhost'"),
    ({"connect_timeout_s": 0}, "connect_timeout_s must be > 0 and timeout_s >= 0 (0: no timeout)"),
    ({"timeout_s": -0.5}, "connect_timeout_s must be > 0 and timeout_s >= 0 (0: no timeout)"),
    ({"per_try_timeout_s": 0}, "per_try_timeout_s must be > 0 (or unset)"),
    ({"outlier_max_ejection_percent": -1}, "outlier_max_ejection_percent must be between 0 and 100"),
    ({"outlier_max_ejection_percent": 101}, "outlier_max_ejection_percent must be between 0 and 100"),
    ({"max_request_bytes": 0}, "max_request_bytes must be >= 1"),
]

ACCEPTED = [
    {"subset_shards": 1}, {"retries": 0}, {"rest_port": 1, "grpc_port": 65535},
    {"timeout_s": 0}, {"timeout_s": 0.5}, {"connect_timeout_s": 0.01}, {"per_try_timeout_s": 0.5},
    {"outlier_max_ejection_percent": 0}, {"outlier_max_ejection_percent": 100}, {"max_request_bytes": 1},
    {"listen_address": "::1"},
]


@pytest.mark.parametrize(("changes", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_a_setting_out_of_range_is_refused_by_name(changes, message) -> None:
    with pytest.raises(ValueError) as e:
        GatewayOptions(**changes)
    assert str(e.value) == message


@pytest.mark.parametrize("changes", ACCEPTED, ids=[str(c) for c in ACCEPTED])
def test_the_boundaries_themselves_are_accepted(changes) -> None:
    opts = GatewayOptions(**changes)
    assert all(getattr(opts, k) == v for k, v in changes.items())


def test_durations_are_exact_to_the_nanosecond() -> None:
    assert (duration(1.5).seconds, duration(1.5).nanos) == (1, 500_000_000)
    assert duration(0.001).ToNanoseconds() == 1_000_000
    assert duration(60).ToNanoseconds() == 60_000_000_000


def test_packing_is_byte_for_byte_the_same_whatever_the_map_order() -> None:
    """A Struct's fields are a map: packed deterministically, two equal structs built in different
    orders give equal bytes (each resource is serialised once per snapshot and compared by bytes)."""
    one, two = struct_pb2.Struct(), struct_pb2.Struct()
    keys = [f"k{i}" for i in range(40)]
    for k in keys:
        one[k] = k
    for k in reversed(keys):
        two[k] = k
    assert pack(one).value == pack(two).value
    assert pack(one).type_url == "type.googleapis.com/google.protobuf.Struct"


def test_the_ads_source_and_typed_extensions() -> None:
    src = ads_source()
    assert src.HasField("ads") and src.resource_api_version == config_source_pb2.V3
    ext = typed_extension("envoy.filters.http.router", struct_pb2.Struct())
    assert set(ext) == {"name", "typed_config"} and ext["name"] == "envoy.filters.http.router"
    packed = ext["typed_config"]
    assert isinstance(packed, any_pb2.Any) and packed.Is(struct_pb2.Struct.DESCRIPTOR)
