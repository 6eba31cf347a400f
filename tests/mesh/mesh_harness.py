"""Runs ``msm up`` as a user does (a subprocess, on free loopback ports) and talks to what it starts.

The mesh is real: MLServer processes with msm's adapter, the control plane and an Envoy gateway.
``LocalMeshProcess.stop`` sends SIGTERM, as Ctrl-C would, and checks every child is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from placement.local.ports import free_port

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "examples" / "quickstart"
DIGIT_8 = (QUICKSTART / "digit-8.json").read_bytes()  # the article's body
DIGIT_8_V2 = (QUICKSTART / "digit-8-v2.json").read_bytes()  # the standard V2 body


def runtime_yaml(name: str = "mlserver-1.x", *, memory: str = "1Gi", mem_buffer: int = 134217728,
                 load_timeout_ms: int = 30000) -> str:
    """A ModelMesh MLServer ServingRuntime (the article's shape) with the given memory numbers."""
    return f"""\
apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata:
  name: {name}
  namespace: modelmesh-serving
spec:
  supportedModelFormats:
    - name: sklearn
      version: "0"
      autoSelect: true
  multiModel: true
  grpcEndpoint: port:8085
  grpcDataEndpoint: port:8001
  containers:
    - name: mlserver
      image: seldonio/mlserver:1.7.1
      resources:
        limits:
          memory: "{memory}"
  builtInAdapter:
    serverType: mlserver
    runtimeManagementPort: 8001
    memBufferBytes: {mem_buffer}
    modelLoadingTimeoutMillis: {load_timeout_ms}
"""


def isvc_yaml(name: str, path: str, *, min_replicas: int | None = None) -> str:
    extra = f"    minReplicas: {min_replicas}\n" if min_replicas is not None else ""
    return f"""\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {name}
  namespace: modelmesh-serving
  annotations:
    serving.kserve.io/deploymentMode: ModelMesh
spec:
  predictor:
{extra}    model:
      modelFormat:
        name: sklearn
      storage:
        parameters:
          type: pvc
          name: my-models-pvc
        path: {path}
"""


def local_config(models_dir: Path, replicas: int) -> str:
    return (f"pvcs:\n  my-models-pvc: {models_dir}\nruntimeReplicas:\n  mlserver-1.x: {replicas}\n"
            "defaultNamespace: modelmesh-serving\n")


def rewrite(path: Path, text: str) -> float:
    """Replace a manifest with a new mtime (the folder watch sees the change); when it was written."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    while path.stat().st_mtime_ns == before:  # coarse file-system clocks
        time.sleep(0.01)
        path.write_text(text)
    return time.monotonic()


class LocalMeshProcess:
    """``msm up DIR`` in the background; ``start`` returns once it printed where everything listens."""

    def __init__(self, manifests: Path, state_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.dir = manifests
        self.state_dir = state_dir
        self.extra_args = extra_args  # more flags of msm up
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.xds_port, self.admin_port = free_port(), free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self, timeout: float = 240.0) -> LocalMeshProcess:
        cmd = [sys.executable, "-m", "msm.cli", "up", str(self.dir),
               "--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port),
               "--xds-port", str(self.xds_port), "--admin-port", str(self.admin_port),
               "--state-dir", str(self.state_dir), *self.extra_args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(check=False)
                raise AssertionError("msm up did not get ready:\n" + "".join(self.lines) + self.logs())
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.strip() == "Ctrl-C stops everything.":  # the last line of the ready block
                self._ready.set()

    def logs(self) -> str:
        out = []
        for name in ("control-plane.log", "envoy.log"):
            p = self.state_dir / name
            if p.exists():
                tail = p.read_text(errors="replace").splitlines(True)[-60:]
                out.append(f"\n--- {name} (tail) ---\n" + "".join(tail))
        return "".join(out)

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline:
                raise AssertionError(f"msm up never printed {text!r}:\n" + "".join(self.lines))
            time.sleep(0.1)

    def status_cli(self) -> subprocess.CompletedProcess[str]:
        """``msm status`` as a user runs it, against this mesh."""
        return subprocess.run([sys.executable, "-m", "msm.cli", "status", "--admin-port",
                               str(self.admin_port)], cwd=REPO, capture_output=True, text=True, timeout=30)

    def instances(self) -> list[dict[str, Any]]:
        return json.loads((self.state_dir / "instances.json").read_text())

    def control_plane_pid(self) -> int | None:
        marker = str(self.state_dir / "instances.json")
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"control-plane" in cmd and marker.encode() in cmd:
                return int(d.name)
        return None

    def status(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.admin_port}/status", timeout=5)
        r.raise_for_status()
        return r.json()

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0,
                    what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                st = self.status()
                if pred(st):
                    return st
            except (httpx.HTTPError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last status:\n{json.dumps(st, indent=1)}"
                             + self.logs())

    def infer(self, client: httpx.Client, model: str, body: bytes = DIGIT_8,
              **headers: str) -> httpx.Response:
        return client.post(f"{self.rest}/v2/models/{model}/infer", content=body, headers=headers)

    def envoy_pids(self) -> list[int]:
        """Envoy processes started with this mesh's bootstrap."""
        bootstrap = str(self.state_dir / "envoy-bootstrap.yaml").encode()
        out = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if bootstrap in cmdline and any(a.endswith(b"envoy") for a in cmdline[:1]):
                    out.append(int(proc.name))
        return out

    def stop(self, check: bool = True) -> int | None:
        if self.proc is None:
            return None
        pids = []
        try:
            for i in self.instances():
                pids += [p for p in (i.get("mlserver_pid"), i.get("adapter_pid")) if p]
        except (OSError, ValueError):
            pass
        cp = self.control_plane_pid()
        if cp:
            pids.append(cp)
        pids += self.envoy_pids()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        left = [p for p in pids if _alive(p)]
        for p in left:  # never leave a process behind, even when the check fails
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if check:
            assert rc == 0, f"msm up exited {rc}:\n{''.join(self.lines)}"
            assert not left, f"processes left running after msm up stopped: {left}"
        return rc


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Traffic:
    """Requests in a loop on background threads until stopped; records every outcome."""

    def __init__(self, send: Callable[[httpx.Client], httpx.Response], threads: int = 2) -> None:
        self._send = send
        self._stop = threading.Event()
        self.results: list[tuple[float, int, str]] = []  # (time, status, model name or error text)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as c:
            while not self._stop.is_set():
                try:
                    r = self._send(c)
                    body = r.json() if r.status_code == 200 else {}
                    name = body.get("modelName") or body.get("model_name") or r.text[:300]
                    ok = r.status_code == 200 and _prediction(body) == 8
                    self.results.append((time.monotonic(), r.status_code if ok else -r.status_code, name))
                except httpx.HTTPError as e:
                    self.results.append((time.monotonic(), 0, repr(e)))
                time.sleep(0.01)

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]


def _prediction(body: dict[str, Any]) -> int | None:
    """The predicted digit in either response shape (the article's or V2 JSON)."""
    out = (body.get("outputs") or [{}])[0]
    if "contents" in out:
        values = out["contents"].get("int64Contents") or []
        return int(values[0]) if values else None
    data = out.get("data") or []
    return int(data[0]) if data else None


def prediction(r: httpx.Response) -> int | None:
    return _prediction(r.json()) if r.status_code == 200 else None
