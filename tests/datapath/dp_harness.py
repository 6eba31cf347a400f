"""A real MLServer serving the digits SVM behind a real Envoy built from data_path's filters.

Used by the tests in this folder and by ``bench_latency.py``. Routes are hand-built here (the
translation proper lives in xds_server/translate/routes.py); every process is stopped on exit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, wrappers_pb2

from placement.local.ports import free_port
from xds_server.translate import data_path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MODEL_HEADER = "mm-vmodel-id"
REVISION = "sklearn-mnist__isvc-3c10c62d34"

# the article's 8x8 scan (section 1.5), which the SVM classifies as 8
ARTICLE_PIXELS = [
    0.0, 0.0, 1.0, 11.0, 14.0, 15.0, 3.0, 0.0, 0.0, 1.0, 13.0, 16.0, 12.0, 16.0, 8.0, 0.0,
    0.0, 8.0, 16.0, 4.0, 6.0, 16.0, 5.0, 0.0, 0.0, 5.0, 15.0, 11.0, 13.0, 14.0, 0.0, 0.0,
    0.0, 0.0, 2.0, 12.0, 16.0, 13.0, 0.0, 0.0, 0.0, 0.0, 0.0, 13.0, 16.0, 16.0, 6.0, 0.0,
    0.0, 0.0, 0.0, 16.0, 16.0, 16.0, 7.0, 0.0, 0.0, 0.0, 0.0, 11.0, 13.0, 12.0, 1.0, 0.0,
]
# the article's curl body, byte for byte
ARTICLE_BODY = (
    '{"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "contents": '
    '{"fp32_contents": [' + ", ".join(str(p) for p in ARTICLE_PIXELS) + "]}}]}"
)


def train_model(path: Path) -> Path:
    """The sample SVM on scikit-learn's bundled digits, deterministic, saved with joblib."""
    import joblib
    from sklearn import datasets, svm

    digits = datasets.load_digits()
    clf = svm.SVC(gamma=0.001)
    clf.fit(digits.data.reshape((len(digits.images), -1)), digits.target)
    joblib.dump(clf, path)
    return path


def wait_until(check, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not ready after {timeout_s}s")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@contextmanager
def running(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@dataclass
class MLServer:
    http_port: int
    grpc_port: int
    models: list[str]


@contextmanager
def mlserver(workdir: Path, model_ids: list[str],
             versions: dict[str, str] | None = None) -> Iterator[MLServer]:
    """One MLServer process holding the digits SVM under each of ``model_ids`` (optionally versioned)."""
    repo = workdir / "models"
    repo.mkdir(parents=True, exist_ok=True)
    joblib_path = train_model(workdir / "mnist-svm.joblib")
    for mid in model_ids:
        d = repo / mid
        d.mkdir(exist_ok=True)
        shutil.copy(joblib_path, d / "mnist-svm.joblib")
        (d / "model-settings.json").write_text(json.dumps({
            "name": mid,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./mnist-svm.joblib",
                           **({"version": versions[mid]} if versions and mid in versions else {})},
        }))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (repo / "settings.json").write_text(json.dumps({
        "debug": False, "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
        "metrics_port": metrics_port, "parallel_workers": 0, "load_models_at_startup": True,
        "metrics_dir": str(workdir / "metrics"), "environments_dir": str(workdir / "envs"),
    }))
    env = {**os.environ, "MLSERVER_HTTP_PORT": str(http_port), "MLSERVER_GRPC_PORT": str(grpc_port),
           "MLSERVER_METRICS_PORT": str(metrics_port), "MLSERVER_HOST": "127.0.0.1",
           "MLSERVER_PARALLEL_WORKERS": "0"}
    with running([str(VENV_BIN / "mlserver"), "start", str(repo)], workdir / "mlserver.log",
                 env=env, cwd=workdir) as proc:
        base = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: all(http_status(f"{base}/v2/models/{m}/ready") == 200 for m in model_ids),
                   90, "mlserver", proc)
        yield MLServer(http_port, grpc_port, model_ids)


# ---- Envoy -------------------------------------------------------------------------------------

REST_CLUSTER, GRPC_CLUSTER = "mlserver_rest", "mlserver_grpc"


def _pack(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _cluster(name: str, port: int, http2: bool) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.STATIC, connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)))),
            ])]),
    )
    if http2:
        c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
            _pack(hpo.HttpProtocolOptions(explicit_http_config=hpo.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))))
    return c


def _header(name: str, exact: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=exact))


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


def _per_route(route: rc.Route, enabled: bool) -> None:
    for name, cfg in data_path.transcoding_per_route(enabled).items():
        route.typed_per_filter_config[name].CopyFrom(cfg)


def rest_routes(name: str, revision: str) -> list[rc.Route]:
    """A: ``data`` body → REST port; B: other infer bodies → gRPC port (transcoded); C: the rest → REST."""
    timeout = duration_pb2.Duration(seconds=30)
    path_rewrite = regex_pb2.RegexMatchAndSubstitute(
        pattern=_regex(f"^/v2/models/{name}(/|$)"), substitution=f"/v2/models/{revision}\\1")
    a = rc.Route(name=f"{name}/body", match=rc.RouteMatch(
        path_separated_prefix=f"/v2/models/{name}",
        headers=[_header(data_path.REST_BODY_HEADER, data_path.REST_BODY_DATA)]),
        route=rc.RouteAction(cluster=REST_CLUSTER, regex_rewrite=path_rewrite, timeout=timeout),
        request_headers_to_remove=[data_path.REST_BODY_HEADER])
    _per_route(a, False)
    b = rc.Route(name=f"{name}/infer", match=rc.RouteMatch(
        safe_regex=_regex(f"/v2/models/{name}(/versions/[^/]+)?/infer"),
        headers=[_header(":method", "POST")]),
        route=rc.RouteAction(cluster=GRPC_CLUSTER, timeout=timeout),
        metadata=data_path.route_target_metadata(revision))
    _per_route(b, True)
    c = rc.Route(name=f"{name}/other", match=rc.RouteMatch(path_separated_prefix=f"/v2/models/{name}"),
                 route=rc.RouteAction(cluster=REST_CLUSTER, regex_rewrite=path_rewrite, timeout=timeout))
    _per_route(c, False)
    return [a, b, c]


def grpc_routes(name: str, revision: str) -> list[rc.Route]:
    match = rc.RouteMatch(prefix="/", headers=[_header(MODEL_HEADER, name)])
    return [rc.Route(name=f"{name}/grpc", match=match,
                     route=rc.RouteAction(cluster=GRPC_CLUSTER, timeout=duration_pb2.Duration(seconds=30)),
                     metadata=data_path.route_target_metadata(revision))]


def _listener(name: str, port: int, filters, routes: list[rc.Route]) -> listener_pb2.Listener:
    m = hcm.HttpConnectionManager(
        stat_prefix=name, codec_type=hcm.HttpConnectionManager.AUTO, http_filters=filters,
        route_config=route_pb2.RouteConfiguration(name=name, virtual_hosts=[rc.VirtualHost(
            name=name, domains=["*"], routes=routes,
            request_body_buffer_limit=wrappers_pb2.UInt64Value(value=64 * 1024 * 1024))]),
    )
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=_pack(m))])],
    )


@dataclass
class Gateway:
    rest_port: int
    grpc_port: int
    admin_port: int
    log: Path
    names: dict[str, str] = field(default_factory=dict)  # client model name -> revision id

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"


@contextmanager
def envoy_gateway(workdir: Path, ml: MLServer, names: dict[str, str]) -> Iterator[Gateway]:
    """Envoy with data_path's filters, routes for each client name → revision id in ``names``."""
    rest_port, grpc_port, admin_port = free_port(), free_port(), free_port()
    rest = [r for n, rev in names.items() for r in rest_routes(n, rev)]
    grpc = [r for n, rev in names.items() for r in grpc_routes(n, rev)]
    boot = bootstrap_pb2.Bootstrap()
    boot.admin.address.socket_address.address = "127.0.0.1"
    boot.admin.address.socket_address.port_value = admin_port
    boot.static_resources.listeners.extend([
        _listener("rest", rest_port, data_path.rest_http_filters(None), rest),
        _listener("grpc", grpc_port, data_path.grpc_http_filters(None), grpc),
    ])
    boot.static_resources.clusters.extend([
        _cluster(REST_CLUSTER, ml.http_port, http2=False), _cluster(GRPC_CLUSTER, ml.grpc_port, http2=True)])
    cfg = workdir / "envoy.json"
    cfg.write_text(json_format.MessageToJson(boot))
    log = workdir / "envoy.log"
    cmd = [str(VENV_BIN / "envoy"), "-c", str(cfg), "--concurrency", "1", "--base-id", str(free_port()),
           "-l", os.environ.get("MSM_ENVOY_LOG_LEVEL", "warning"), "--disable-hot-restart"]
    with running(cmd, log) as proc:
        wait_until(lambda: http_status(f"http://127.0.0.1:{admin_port}/ready") == 200, 30, "envoy", proc)
        yield Gateway(rest_port, grpc_port, admin_port, log, dict(names))


@contextmanager
def mesh(workdir: Path, names: dict[str, str],
         versions: dict[str, str] | None = None) -> Iterator[tuple[MLServer, Gateway]]:
    """MLServer holding every revision in ``names`` and an Envoy in front of it."""
    with ExitStack() as stack:
        ml = stack.enter_context(mlserver(workdir, sorted(set(names.values())), versions))
        gw = stack.enter_context(envoy_gateway(workdir, ml, names))
        yield ml, gw


def post(url: str, body: bytes | str, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """POST without adding a content-type unless given (like the article's ``curl -d`` minus its default)."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    opener = urllib.request.build_opener(_NoDefaultContentType())
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class _NoDefaultContentType(urllib.request.HTTPHandler):
    """urllib sets ``Content-Type: application/x-www-form-urlencoded`` on every POST; undo that
    when the caller gave none, so the request carries no content-type header at all."""

    def http_request(self, req):
        given = any(k.lower() == "content-type" for k in req.headers)
        req = super().http_request(req)
        if not given:
            req.unredirected_hdrs.pop("Content-type", None)
        return req
