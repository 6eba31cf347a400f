"""Model routes on an Istio ingress gateway, two ways, measured: through istiod, or msm direct.

Starts ``msm dev-cluster up --istio`` (real istiod, msm's ``msm-model-gateway`` run by the real
pilot-agent with upstream Envoy), then adds a *stock* Istio ingress gateway configured by istiod
(``stock-gateway``: rendered by ``istioctl manifest generate`` from an IstioOperator of its own,
applied with kubectl; its fixed ports moved so it runs beside msm's). Then, for a one-model change,
the time from ``kubectl apply`` until the gateway's Envoy has it (polled on its admin
``/config_dump``):

- **through istiod**: an Istio ``Gateway`` plus, per model, a ``VirtualService`` (``uri prefix
  /v2/models/<model>/``, and ``mm-vmodel-id`` for gRPC) to the runtime's Service msm creates;
  measured on the stock gateway. *New model*: a VirtualService of a new model name. *Weight
  change*: one VirtualService's split between the runtime Service and a second Service.
- **msm direct**: *new model*: an InferenceService of a new name (same runtime, same storage)
  until the msm gateway has its scoped route configuration ``msm_rest/<model>``. *Weight change*:
  ``canaryTrafficPercent`` of an InferenceService with a canary revision loaded (its route's
  split moves, nothing loads).

Each new model is deleted again (and its route seen gone) before the next repetition.

The stock gateway runs upstream Envoy here (what the pod runner has for the ``proxyv2`` image),
which rejects three Istio-only extensions istiod puts in a gateway's config by default (Istio's
own Envoy build has them): the ``istio.metadata_exchange`` cluster filter and the ``istio.alpn``
HTTP filter (istiod's env ``PILOT_ENABLE_METADATA_EXCHANGE=false``, ``PILOT_ENABLE_ALPN_FILTER=false``,
set on its Deployment, then istiod restarted) and the ``istio.stats`` HTTP filter (a Telemetry
resource disabling metrics for the stock gateway). None of them changes how istiod pushes.

The table has each change from ``kubectl apply`` starting (kubectl's own ~0.1-0.2 s included,
the same on both paths) and from kubectl's return (what the control plane and Envoy add).

    .venv/bin/python bench/istio_paths.py --reps 20
    .venv/bin/python bench/istio_paths.py --reps 5 --state-dir /tmp/istio-paths

Needs ``make tools`` (Kubernetes' and Istio's programs) and ``unshare -m``. It uses the dev
cluster's fixed addresses (127.0.9.x, 127.0.10.x, 127.0.11.x) and Istio's fixed ports (15000,
15012, 15020, 15021, 15090 ...): nothing else of the kind may run meanwhile. About a minute
to set up, then about 2 s per repetition.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from placement.local.apiserver import default_tools_dir  # noqa: E402
from placement.local.samples import MNIST_SVM, ensure_sample_models  # noqa: E402

NS = "modelmesh-serving"
ISTIO_NS = "istio-system"
PVC = "my-models-pvc"
RUNTIME_SERVICE = "modelmesh-serving-mlserver-1-x"
STUB_SERVICE = "stock-canary-stub"  # the second destination of the Istio weight split
STOCK = "stock-gateway"
ISTIOD_READY = "http://127.0.9.1:8080/ready"  # the dev cluster's istiod
#: istiod settings without which upstream Envoy rejects the gateway's clusters and listeners
ISTIOD_ENV = ("PILOT_ENABLE_METADATA_EXCHANGE=false", "PILOT_ENABLE_ALPN_FILTER=false")
MSM_ADMIN = "http://127.0.0.1:15000"  # the msm gateway's Envoy (Istio's fixed admin port)
CANARY_MODEL = "canary-m"
CANARY_FILE = "mnist-logreg.joblib"  # the canary revision's storage (a sample model beside the SVM)
WEIGHTED_MODEL = "weighted-m"
POLL_S = 0.005


@dataclass(frozen=True)
class Ports:
    rest: int
    grpc: int
    xds: int
    admin: int
    stock_listener: int
    stock_admin: int
    stock_status: int
    stock_health: int
    stock_prometheus: int


@dataclass
class Sample:
    """One repetition: seconds from ``kubectl apply`` starting until the gateway had the change,
    and how long kubectl itself took."""

    seconds: float
    kubectl_s: float


@dataclass
class Results:
    rows: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)

    def add(self, change: str, path: str, s: Sample) -> None:
        self.rows.setdefault(change, {}).setdefault(path, []).append(s)


# -- the dev cluster -------------------------------------------------------------------------------
class DevCluster:
    """``msm dev-cluster up --istio`` as a child process group; ``stop()`` is its Ctrl-C."""

    def __init__(self, state_dir: Path, models: Path, ports: Ports) -> None:
        self.state_dir, self.models, self.ports = state_dir, models, ports
        self.log_path = state_dir / "dev-cluster.log"
        self.kubeconfig = state_dir / "kubeconfig"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        p = self.ports
        return [sys.executable, "-m", "msm.cli", "dev-cluster", "up", "--istio",
                "--state-dir", str(self.state_dir), "--pvc", f"{PVC}={self.models}",
                "--rest-port", str(p.rest), "--grpc-port", str(p.grpc), "--xds-port", str(p.xds),
                "--admin-port", str(p.admin)]

    def start(self, timeout: float = 300.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if "msm dev-cluster: ready in" in text:
                return
            if self.proc.poll() is not None or "msm dev-cluster: failed" in text:
                raise RuntimeError(f"the dev cluster did not start; see {self.log_path}:\n{text[-2000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"the dev cluster was not ready in {timeout:.0f} s; see {self.log_path}")

    def child_pids(self, program: str) -> list[int]:
        """Processes of ``program`` the dev cluster started itself (istiod, say)."""
        if self.proc is None:
            return []
        out = subprocess.run(["ps", "--ppid", str(self.proc.pid), "-o", "pid=,args="], capture_output=True,
                             text=True, check=False).stdout
        return [int(line.split()[0]) for line in out.splitlines()
                if len(line.split()) > 1 and Path(line.split()[1]).name == program]

    def stop(self, timeout: float = 90.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        self.bin = str(default_tools_dir() / "kubectl")
        self.kubeconfig = kubeconfig

    def argv(self, *args: str) -> list[str]:
        return [self.bin, f"--kubeconfig={self.kubeconfig}", *args]

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120.0) -> str:
        r = subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True, timeout=timeout,
                           check=False)
        if r.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout

    def apply_async(self, manifest: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(self.argv("apply", "-f", "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdin is not None
        proc.stdin.write(manifest)
        proc.stdin.close()
        return proc

    def get_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.run("get", *args, "-o", "json"))


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError, RuntimeError, ValueError, KeyError):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


# -- Envoy's admin -----------------------------------------------------------------------------
class EnvoyAdmin:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=5.0)

    def route_configs(self) -> list[dict[str, Any]]:
        """Every dynamic RouteConfiguration (RDS, and Scoped RDS's) of the Envoy."""
        r = self.http.get("/config_dump", params={"resource": "dynamic_route_configs"})
        r.raise_for_status()
        return [c["route_config"] for c in r.json().get("configs", ()) if "route_config" in c]

    def scopes(self) -> set[str]:
        """Names of the dynamic ScopedRouteConfigurations (Scoped RDS)."""
        r = self.http.get("/config_dump", params={"resource": "dynamic_scoped_route_configs"})
        r.raise_for_status()
        return {s["name"] for c in r.json().get("configs", ()) for s in c.get("scoped_route_configs", ())}

    def listeners(self) -> str:
        return self.http.get("/listeners", params={"format": "json"}).text

    def close(self) -> None:
        self.http.close()


def routes(configs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for rc in configs:
        for vh in rc.get("virtual_hosts", ()):
            yield from vh.get("routes", ())


def route_prefix(r: dict[str, Any]) -> str:
    m = r.get("match", {})
    return str(m.get("prefix") or m.get("path_separated_prefix") or "")


# -- the stock gateway ---------------------------------------------------------------------------
def stock_operator(p: Ports) -> str:
    """An IstioOperator with only a second ingress gateway (profile ``empty``): rendered with
    ``istioctl manifest generate`` and applied with kubectl, never installed (that could prune the
    dev cluster's own IstioOperator). Its agent's and Envoy's fixed ports move: proxyAdminPort and
    statusPort through ``proxy.istio.io/config``, Envoy's health and Prometheus listeners through
    ENVOY_STATUS_PORT / ENVOY_PROMETHEUS_PORT (read by pilot-agent, options.go)."""
    return f"""apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: {STOCK}
spec:
  profile: empty
  components:
    ingressGateways:
      - name: {STOCK}
        namespace: {ISTIO_NS}
        enabled: true
        label:
          app: {STOCK}
          istio: {STOCK}
        k8s:
          replicaCount: 1
          podAnnotations:
            proxy.istio.io/config: |
              proxyAdminPort: {p.stock_admin}
              statusPort: {p.stock_status}
          env:
            - name: ENVOY_STATUS_PORT
              value: "{p.stock_health}"
            - name: ENVOY_PROMETHEUS_PORT
              value: "{p.stock_prometheus}"
          readinessProbe:
            httpGet: {{path: /healthz/ready, port: {p.stock_health}, scheme: HTTP}}
            initialDelaySeconds: 1
            periodSeconds: 2
            failureThreshold: 30
            timeoutSeconds: 1
          service:
            type: ClusterIP
            ports:
              - name: http-models
                port: {p.stock_listener}
                targetPort: {p.stock_listener}
  values:
    gateways:
      istio-ingressgateway:
        autoscaleEnabled: false
"""


def stock_routing_objects(p: Ports, runtime_port: int, selector: dict[str, str]) -> str:
    """The stock gateway's Gateway (its listener on loopback only), the Service the weight split's
    second destination names (the runtime's pods again: ``selector``), and a Telemetry without
    metrics for it (upstream Envoy has no ``istio.stats`` filter)."""
    return f"""apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: {STOCK}-no-istio-stats
  namespace: {ISTIO_NS}
spec:
  selector:
    matchLabels:
      istio: {STOCK}
  metrics:
    - providers: [{{name: prometheus}}]
      overrides:
        - disabled: true
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: {STOCK}
  namespace: {ISTIO_NS}
spec:
  selector:
    istio: {STOCK}
  servers:
    - port: {{number: {p.stock_listener}, name: http-models, protocol: HTTP}}
      bind: 127.0.0.1
      hosts: ["*"]
---
apiVersion: v1
kind: Service
metadata:
  name: {STUB_SERVICE}
  namespace: {NS}
spec:
  selector: {json.dumps(selector)}
  ports:
    - name: http
      port: {runtime_port}
      targetPort: {runtime_port}
"""


def virtual_service(model: str, runtime_port: int, grpc_port: int, canary_weight: int | None = None) -> str:
    host = f"{RUNTIME_SERVICE}.{NS}.svc.cluster.local"
    if canary_weight is None:
        rest = f"""        - destination: {{host: {host}, port: {{number: {runtime_port}}}}}"""
    else:
        stub = f"{STUB_SERVICE}.{NS}.svc.cluster.local"
        rest = (f"""        - destination: {{host: {host}, port: {{number: {runtime_port}}}}}
          weight: {100 - canary_weight}
        - destination: {{host: {stub}, port: {{number: {runtime_port}}}}}
          weight: {canary_weight}""")
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {model}
  namespace: {NS}
spec:
  hosts: ["*"]
  gateways: ["{ISTIO_NS}/{STOCK}"]
  http:
    - match:
        - uri: {{prefix: /v2/models/{model}/}}
      route:
{rest}
    - match:
        - headers: {{mm-vmodel-id: {{exact: {model}}}}}
      route:
        - destination: {{host: {host}, port: {{number: {grpc_port}}}}}
"""


def inference_service(name: str, path: str = MNIST_SVM, canary_percent: int | None = None) -> str:
    canary = f"\n    canaryTrafficPercent: {canary_percent}" if canary_percent is not None else ""
    return f"""apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {name}
  namespace: {NS}
  annotations:
    serving.kserve.io/deploymentMode: ModelMesh
spec:
  predictor:{canary}
    model:
      modelFormat:
        name: sklearn
      storage:
        parameters:
          type: pvc
          name: {PVC}
        path: {path}
"""


# -- measuring -----------------------------------------------------------------------------------
def timed_apply(kube: Kube, manifest: str, done: Callable[[], bool], timeout: float = 60.0) -> Sample:
    """Seconds from starting ``kubectl apply`` until ``done()``, polled meanwhile."""
    t0 = time.perf_counter()
    proc = kube.apply_async(manifest)
    kubectl_s: float | None = None
    seen: float | None = None
    while seen is None or kubectl_s is None:
        now = time.perf_counter()
        if kubectl_s is None and proc.poll() is not None:
            kubectl_s = now - t0
            if proc.returncode:
                raise RuntimeError(f"kubectl apply: {proc.stdout.read() if proc.stdout else ''}")
        if seen is None and done():
            seen = time.perf_counter() - t0
        if now - t0 > timeout:
            proc.kill()
            raise TimeoutError(f"change not seen within {timeout:.0f} s")
        time.sleep(POLL_S)
    return Sample(seen, kubectl_s)


def fraction_numerators(configs: list[dict[str, Any]], name: str) -> set[int]:
    out: set[int] = set()
    for rc in configs:
        if rc.get("name") != name:
            continue
        for r in routes([rc]):
            frac = r.get("match", {}).get("runtime_fraction", {}).get("default_value", {})
            if "numerator" in frac:
                out.add(int(frac["numerator"]))
    return out


def stub_weight(configs: list[dict[str, Any]], model: str) -> int | None:
    for r in routes(configs):
        if route_prefix(r) == f"/v2/models/{model}/":
            for c in r.get("route", {}).get("weighted_clusters", {}).get("clusters", ()):
                if STUB_SERVICE in c.get("name", ""):
                    return int(c.get("weight", 0))
            return 0
    return None


def has_prefix(configs: list[dict[str, Any]], model: str) -> bool:
    return any(route_prefix(r) == f"/v2/models/{model}/" for r in routes(configs))


def has_config(configs: list[dict[str, Any]], name: str) -> bool:
    return any(rc.get("name") == name for rc in configs)


def canary_weights(reps: int) -> list[int]:
    """Canary percents whose splits differ from the one before (msm's first route takes max(p, 100-p))."""
    return [(10, 20, 30, 40)[(i + 1) % 4] for i in range(reps)]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state_dir = Path(args.state_dir).resolve()
        self.models = (Path(args.models_dir) if args.models_dir else self.state_dir / "models").resolve()
        self.ports = Ports(args.rest_port, args.grpc_port, args.xds_port, args.admin_port, args.stock_port,
                           args.stock_admin_port, args.stock_status_port, args.stock_health_port,
                           args.stock_prometheus_port)
        self.cluster = DevCluster(self.state_dir / "cluster", self.models, self.ports)
        self.kube = Kube(self.cluster.kubeconfig)
        self.msm = EnvoyAdmin(MSM_ADMIN)
        self.stock = EnvoyAdmin(f"http://127.0.0.1:{self.ports.stock_admin}")
        self.results = Results()
        self.run_id = f"{int(time.time()) % 100000:05d}"
        self.runtime_port = self.grpc_port = 0

    def say(self, msg: str) -> None:
        print(f"istio_paths: {msg}", file=sys.stderr, flush=True)

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        ensure_sample_models(self.models, with_xgboost=False)
        self.say(f"starting: {shlex.join(self.cluster.command())}")
        self.cluster.start()
        self.say("dev cluster ready; the article's InferenceService first (it makes the runtime's Service)")
        self.kube.run("apply", "-f", str(REPO / "examples" / "quickstart" / "sklearn-mnist.yaml"))
        self.kube.run("wait", "--for=condition=Ready", "isvc/sklearn-mnist", "-n", NS, "--timeout=300s",
                      timeout=320)
        wait_for("the runtime's Service",
                 lambda: bool(self.kube.get_json("service", RUNTIME_SERVICE, "-n", NS)), 60)
        svc = self.kube.get_json("service", RUNTIME_SERVICE, "-n", NS)
        ports = {p["name"]: int(p["port"]) for p in svc["spec"]["ports"]}
        self.runtime_port, self.grpc_port = ports["http"], ports["grpc"]
        self.restart_istiod_for_upstream_envoy()
        self.add_stock_gateway(dict(svc["spec"]["selector"]))

    def restart_istiod_for_upstream_envoy(self) -> None:
        """istiod's env on its Deployment, then the process restarted (the dev cluster restarts an
        istiod that exits, with its Deployment's env)."""
        self.kube.run("set", "env", "deployment/istiod", "-n", ISTIO_NS, *ISTIOD_ENV)
        old = self.cluster.child_pids("pilot-discovery")
        self.say(f"istiod: {' '.join(ISTIOD_ENV)}; restarting it (pid {old})")
        for pid in old:
            os.kill(pid, signal.SIGTERM)

        def restarted() -> bool:
            pids = self.cluster.child_pids("pilot-discovery")
            fresh = bool(pids) and not set(pids) & set(old)
            return fresh and httpx.get(ISTIOD_READY, timeout=2).status_code == 200

        wait_for("istiod back", restarted, 90)

    def add_stock_gateway(self, runtime_selector: dict[str, str]) -> None:
        iop = self.state_dir / "stock-gateway-iop.yaml"
        iop.write_text(stock_operator(self.ports))
        istioctl = str(default_tools_dir() / "istioctl")
        rendered = subprocess.run([istioctl, "manifest", "generate", "-f", str(iop)], capture_output=True,
                                  text=True, check=True, timeout=120).stdout
        (self.state_dir / "stock-gateway.yaml").write_text(rendered)
        self.say("stock gateway: istioctl manifest generate, kubectl apply (the pod runner runs its pod)")
        self.kube.run("apply", "-f", "-", stdin=rendered)
        self.kube.run("apply", "-f", "-", stdin=stock_routing_objects(self.ports, self.runtime_port,
                                                                        runtime_selector))
        self.kube.run("wait", "--for=condition=Ready", "pod", "-l", f"istio={STOCK}", "-n", ISTIO_NS,
                      "--timeout=180s", timeout=200)
        wait_for("the stock gateway's listener from istiod",
                 lambda: f'"port_value": {self.ports.stock_listener}' in self.stock.listeners()
                 or f"{self.ports.stock_listener}" in self.stock.listeners(), 60)
        self.say(f"stock gateway ready: its Envoy got listener :{self.ports.stock_listener} from istiod")

    # -- the Istio path ----------------------------------------------------------------------
    def istio_new_model(self, i: int) -> Sample:
        model = f"ist-{self.run_id}-{i}"
        s = timed_apply(self.kube, virtual_service(model, self.runtime_port, self.grpc_port),
                        lambda: has_prefix(self.stock.route_configs(), model))
        self.kube.run("delete", "virtualservice", model, "-n", NS)
        wait_for(f"{model}'s route gone", lambda: not has_prefix(self.stock.route_configs(), model), 60, 0.05)
        return s

    def istio_weight_setup(self) -> None:
        self.kube.run("apply", "-f", "-", stdin=virtual_service(WEIGHTED_MODEL, self.runtime_port,
                                                               self.grpc_port, canary_weight=10))
        wait_for("the weighted VirtualService",
                 lambda: stub_weight(self.stock.route_configs(), WEIGHTED_MODEL) == 10, 60)

    def istio_weight(self, w: int) -> Sample:
        return timed_apply(self.kube, virtual_service(WEIGHTED_MODEL, self.runtime_port, self.grpc_port,
                                                      canary_weight=w),
                           lambda: stub_weight(self.stock.route_configs(), WEIGHTED_MODEL) == w)

    # -- msm direct ----------------------------------------------------------------------------
    def msm_new_model(self, i: int) -> Sample:
        name = f"msm-{self.run_id}-{i}"
        rc = f"msm_rest/{name}"
        s = timed_apply(self.kube, inference_service(name), lambda: self.msm_has_model(rc))
        self.kube.run("delete", "isvc", name, "-n", NS)
        wait_for(f"{name}'s route gone", lambda: not has_config(self.msm.route_configs(), rc), 60, 0.05)
        return s

    def msm_has_model(self, name: str) -> bool:
        """The model's RouteConfiguration and its scope (Scoped RDS): what a request needs."""
        return has_config(self.msm.route_configs(), name) and name in self.msm.scopes()

    def msm_canary_setup(self) -> None:
        self.kube.run("apply", "-f", "-", stdin=inference_service(CANARY_MODEL))
        self.kube.run("wait", "--for=condition=Ready", f"isvc/{CANARY_MODEL}", "-n", NS, "--timeout=180s",
                      timeout=200)
        # a model is loaded on its first request (Standby until then): a canary needs the previous
        # revision loaded, else msm switches to the new one at once
        digit = (REPO / "examples" / "quickstart" / "digit-8.json").read_bytes()
        url = f"http://127.0.0.1:{self.ports.rest}/v2/models/{CANARY_MODEL}/infer"
        wait_for(f"{CANARY_MODEL} answering",
                 lambda: httpx.post(url, content=digit, timeout=60).status_code == 200, 120, 1.0)
        self.kube.run("apply", "-f", "-",
                      stdin=inference_service(CANARY_MODEL, CANARY_FILE, canary_percent=10))
        rc = f"msm_rest/{CANARY_MODEL}"
        wait_for("the canary revision loaded and split 90/10",
                 lambda: fraction_numerators(self.msm.route_configs(), rc) == {900_000}, 180)

    def msm_canary(self, p: int) -> Sample:
        want = {max(p, 100 - p) * 10_000}
        return timed_apply(self.kube, inference_service(CANARY_MODEL, CANARY_FILE, canary_percent=p),
                           lambda: fraction_numerators(self.msm.route_configs(),
                                                       f"msm_rest/{CANARY_MODEL}") == want)

    # -- the run -------------------------------------------------------------------------------
    def measure(self) -> None:
        reps = self.args.reps
        self.say("setting up the weight changes: a VirtualService split, a canary revision")
        self.istio_weight_setup()
        self.msm_canary_setup()
        weights = canary_weights(reps)
        for i in range(reps):  # interleaved, so both paths see the same machine
            steps: list[tuple[str, str, Callable[[int], Sample], int]] = [
                ("new model", "istiod", self.istio_new_model, i),
                ("new model", "msm", self.msm_new_model, i),
                ("weight change", "istiod", self.istio_weight, weights[i]),
                ("weight change", "msm", self.msm_canary, weights[i])]
            for change, path, fn, arg in steps:
                s = fn(arg)
                self.results.add(change, path, s)
                self.say(f"rep {i + 1}/{reps} {change:13s} {path:6s} {s.seconds * 1000:7.0f} ms "
                         f"(kubectl {s.kubectl_s * 1000:.0f} ms)")

    def close(self) -> None:
        self.msm.close()
        self.stock.close()
        self.cluster.stop()


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def table(results: Results) -> str:
    """Both paths side by side: from ``kubectl apply`` starting, and after kubectl returned."""
    def cell(samples: list[Sample], after_kubectl: bool) -> str:
        ms = [(s.seconds - (s.kubectl_s if after_kubectl else 0.0)) * 1000 for s in samples]
        return f"{statistics.median(ms):.0f} / {p90(ms):.0f}" if ms else "-"

    lines = ["| one-model change | through istiod: stock gateway, median / p90 ms "
             "| msm direct: msm-model-gateway, median / p90 ms | n |", "| --- | ---: | ---: | ---: |"]
    for after in (False, True):
        for change in ("new model", "weight change"):
            row = results.rows.get(change, {})
            ist, msm = row.get("istiod", []), row.get("msm", [])
            label = f"{change}, after kubectl returned" if after else f"{change}, from kubectl apply"
            lines.append(f"| {label} | {cell(ist, after)} | {cell(msm, after)} | {min(len(ist), len(msm))} |")
    kubectl = [s.kubectl_s * 1000 for row in results.rows.values() for ss in row.values() for s in ss]
    if kubectl:
        lines.append(f"\n`kubectl apply` itself: median {statistics.median(kubectl):.0f} ms, p90 "
                     f"{p90(kubectl):.0f} ms (n {len(kubectl)}).")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=20, help="repetitions of each change on each path (20)")
    p.add_argument("--state-dir", default=None, help="the dev cluster's state and logs (default: a temp dir)")
    p.add_argument("--models-dir", default=None, help="the PVC's folder (default: STATE_DIR/models)")
    p.add_argument("--rest-port", type=int, default=38008)
    p.add_argument("--grpc-port", type=int, default=38033)
    p.add_argument("--xds-port", type=int, default=38000)
    p.add_argument("--admin-port", type=int, default=38001)
    p.add_argument("--stock-port", type=int, default=38080, help="the stock gateway's listener")
    p.add_argument("--stock-admin-port", type=int, default=38100, help="its Envoy admin (proxyAdminPort)")
    p.add_argument("--stock-status-port", type=int, default=38120, help="its agent's statusPort")
    p.add_argument("--stock-health-port", type=int, default=38121, help="ENVOY_STATUS_PORT")
    p.add_argument("--stock-prometheus-port", type=int, default=38190, help="ENVOY_PROMETHEUS_PORT")
    args = p.parse_args()
    if args.reps < 1:
        p.error("--reps must be at least 1")
    if args.state_dir is None:
        args.state_dir = tempfile.mkdtemp(prefix="msm-istio-paths-")
    bench = Bench(args)
    interrupted = False
    try:
        bench.setup()
        bench.measure()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bench.say("stopping the dev cluster")
        bench.close()
    if interrupted or not bench.results.rows:
        return 1
    print(f"\nOne-model change until the gateway's Envoy has it, from `kubectl apply` (admin /config_dump "
          f"polled every {POLL_S * 1000:.0f} ms), {args.reps} repetitions each, interleaved:\n")
    print(table(bench.results))
    print(f"\n    {shlex.join([Path(sys.executable).name, *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
