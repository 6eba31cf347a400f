"""The cluster an Istio gateway reports measurements through: mutual TLS with its workload
certificate (SDS ``default``), msm's certificate checked against msm's CA and name."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy_check import validate_command, write_static
from tlsutil import CA

from xds_server import resource_types as rt
from xds_server.bootstrap import static_bootstrap
from xds_server.mesh_view import Copy, MeasureEndpoint, MeshView, Model, Revision
from xds_server.translate import GatewayOptions, UpstreamTls, translate
from xds_server.translate.listeners import measure_log
from xds_server.translate.names import MEASURE_CLUSTER
from xds_server.translate.options import MeasureTls

NAME = "msm-xds.modelmesh-serving.svc"


def _view() -> MeshView:
    rev = Revision("m__2", copies=(Copy("i1", "127.0.0.1", 8002, 8001),), measured=True)
    return MeshView(models={"m": Model("m", (rev,))}, measure=MeasureEndpoint("10.0.0.7", 18000))


def _options(ca_pem: str) -> GatewayOptions:
    return GatewayOptions(upstream_tls=UpstreamTls(), measure_cluster=MEASURE_CLUSTER,
                          measure_tls=MeasureTls(ca_pem=ca_pem, server_name=NAME, port=15013))


def test_the_istio_gateway_reports_over_mutual_tls_to_the_measure_port(tmp_path: Path) -> None:
    ca_pem = CA(tmp_path / "ca").pem.cert.read_text()
    opts = _options(ca_pem)
    c = translate(_view(), opts)[rt.CLUSTER][MEASURE_CLUSTER]
    [ep] = c.load_assignment.endpoints[0].lb_endpoints
    address = ep.endpoint.address.socket_address
    assert (address.address, address.port_value) == ("10.0.0.7", 15013)  # the leader, its measure port
    ctx = tls_pb2.UpstreamTlsContext()
    assert c.transport_socket.name == "envoy.transport_sockets.tls"
    assert c.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == NAME
    common = ctx.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.tls_certificate_sds_secret_configs[0].sds_config.api_config_source.grpc_services[
        0].envoy_grpc.cluster_name == "sds-grpc"
    assert common.validation_context.trusted_ca.inline_string == ca_pem
    assert [m.matcher.exact for m in common.validation_context.match_typed_subject_alt_names] == [NAME]
    assert list(common.alpn_protocols) == ["h2"]
    # no token: the certificate is the credential
    cfg = als_pb2.HttpGrpcAccessLogConfig()
    measure_log(opts).typed_config.Unpack(cfg)
    assert cfg.common_config.grpc_service.envoy_grpc.cluster_name == MEASURE_CLUSTER
    assert not cfg.common_config.grpc_service.initial_metadata


def test_envoy_accepts_it(tmp_path: Path) -> None:
    opts = _options(CA(tmp_path / "ca").pem.cert.read_text())
    boot = static_bootstrap(translate(_view(), opts), admin_port=0)
    path = write_static(tmp_path / "static.json", boot, upstream_tls=True)
    p = subprocess.run(validate_command(path), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr + json.dumps(boot)[:2000]


def test_without_tls_the_cluster_is_the_plain_xds_port(tmp_path: Path) -> None:
    plain = GatewayOptions(measure_cluster=MEASURE_CLUSTER, measure_token="t")
    c = translate(_view(), plain)[rt.CLUSTER][MEASURE_CLUSTER]
    assert c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 18000
    assert not c.HasField("transport_socket")
