"""Faults under load: steady traffic over many models while the local mesh's processes are killed
and its manifests edited, and what the clients saw.

Runs ``msm up`` as a user does (a subprocess on free loopback ports, ``tests/mesh/mesh_harness.py``)
on a temporary folder: one MLServer ServingRuntime with 2 replicas whose memory holds only part
of the models (so copies are evicted and loaded again all the time), ``--models`` InferenceServices
over copies of the sample models. An open-loop client sends the article's request
(``examples/quickstart/digit-8.json``) at ``--rate`` requests/s (Poisson arrivals) to models drawn
with Zipf popularity, and records every request: when it was sent, its latency, its status and
whether it answered 8. Meanwhile, each at a known time (a fraction of ``--duration``):

- kill -9 the MLServer of the replica that holds the most popular loaded model;
- kill -9 the adapter of the other replica;
- kill -9 the control plane;
- kill -9 Envoy;
- edit a manifest (the most popular model's storage path → another copy: a rolling update);
- drop hostile manifests: a YAML alias bomb, a model whose storage path escapes the PVC with
  ``../``, a 3 MB file, and a manifest that claims a serving model's name from another namespace;
- remove them again.

``msm up`` restarts what was killed by itself. Before each process kill the mesh is given up to
``--settle`` seconds to be whole again (every instance up, the gateway in sync), so one fault's
effects are not mixed with the previous one's. At the end every model is asked once more (models
that never answer again are *lost*), ``msm up`` is stopped with SIGTERM, and every process it ever
started (MLServer, adapters, control planes, Envoys, and anything else whose command line names
the run's folder) is checked: one still running is *leaked*. Exit status 1 when a model was lost
or a process leaked, 2 when the mesh did not start.

    .venv/bin/python bench/faults.py                      # the defaults: 120 s, 20 models, 20 req/s
    .venv/bin/python bench/faults.py --duration 180 --markdown /tmp/faults.md --keep
    .venv/bin/python bench/faults.py --skip kill-control-plane   # leave a fault out

The schedule is spread over ``--duration``; below ~90 s the faults crowd each other (the waits for
the mesh to settle push them together). Loopback only, free ports (never msm's defaults),
bounded: a run takes ``--duration`` plus about 30 s (training the sample models, starting the
mesh, the final checks, stopping): ~2.5 minutes at the defaults on 2 busy cores. docs/faults.md
has the latest numbers and what they mean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "mesh"))

import httpx  # noqa: E402
from mesh_harness import (  # noqa: E402
    DIGIT_8,
    LocalMeshProcess,
    _alive,
    _prediction,
    isvc_yaml,
    local_config,
    runtime_yaml,
)

from placement.local.samples import MNIST_LOGREG, MNIST_SVM, ensure_sample_models  # noqa: E402

#: The fault schedule: (fraction of --duration, kind). Process kills wait for the mesh to settle.
SCHEDULE = [
    (0.10, "kill-mlserver"),
    (0.22, "kill-adapter"),
    (0.34, "kill-control-plane"),
    (0.46, "kill-envoy"),
    (0.58, "edit-manifest"),
    (0.68, "hostile-manifests"),
    (0.80, "remove-hostile"),
]
SIZE_MULTIPLIER = 1.25  # ModelMesh's (and msm's) estimate: size on disk x 1.25
STALL_DUMP_S = 5.0  # the gateway out of sync this long: Envoy's and msm's view are saved
HOSTILE_FILES = ("a-takeover.yaml", "bomb.yaml", "escape.yaml", "huge.yaml")


# ------------------------------------------------------------------------------------------------
# the mesh, with a clock on its output
# ------------------------------------------------------------------------------------------------

class Mesh(LocalMeshProcess):
    """``msm up`` in the background (the tests' harness), its output lines stamped with a time."""

    def __init__(self, manifests: Path, state_dir: Path) -> None:
        super().__init__(manifests, state_dir)
        self.timed: list[tuple[float, str]] = []

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.timed.append((time.monotonic(), line.rstrip("\n")))
            if line.strip() == "Ctrl-C stops everything.":
                self._ready.set()

    def line_after(self, t: float, pattern: str) -> float | None:
        """When msm up first printed a line matching ``pattern`` at or after ``t``."""
        rx = re.compile(pattern)
        return next((lt for lt, line in list(self.timed) if lt >= t and rx.search(line)), None)


def scan_proc(marker: str) -> dict[int, str]:
    """Processes whose command line contains ``marker``: pid -> command line."""
    out = {}
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if marker in cmd:
            out[int(d.name)] = cmd
    return out


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------

@dataclass
class Req:
    t: float  # sent, seconds since traffic start
    model: str
    latency: float | None = None
    status: int = 0  # HTTP status; 0: no answer
    ok: bool = False  # 200 and the prediction is 8
    error: str = ""
    served: str = ""  # the revision that answered (modelName)

    @property
    def end(self) -> float:
        """When the answer (or the error) came, seconds since traffic start."""
        return self.t + (self.latency or 0.0)


@dataclass
class Fault:
    kind: str
    t: float  # when it was done (since traffic start)
    detail: str = ""
    waited: float = 0.0  # seconds spent waiting for the mesh to settle before it
    recovered: float | None = None  # when the mesh said it was back / the change took effect
    recovered_how: str = ""
    checks: list[str] = field(default_factory=list)  # what was verified during it


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


_NORMALISE = [(re.compile(r"__isvc-[0-9a-f]{10}"), "__isvc-…"),
              (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:…"),
              (re.compile(r"\d+(\.\d+)?s\b"), "Ns"), (re.compile(r"\s+"), " ")]


def failure_class(r: Req) -> str:
    text = r.error
    for rx, sub in _NORMALISE:
        text = rx.sub(sub, text)
    head = f"HTTP {r.status}" if r.status else "no answer"
    return f"{head}: {text.strip()[:160]}"


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------

class FaultRun:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.pvc = root / "pvc"
        self.manifests = root / "manifests"
        self.state = root / "state"
        self.rng = random.Random(args.seed)
        self.models = [f"m{i:02d}" for i in range(args.models)]
        w = [1.0 / (i + 1) ** args.zipf for i in range(args.models)]
        self.weights = [x / sum(w) for x in w]
        self.requests: list[Req] = []
        self.faults: list[Fault] = []
        self.skipped = 0  # arrivals not sent: the client already had --max-in-flight open
        self.t0 = 0.0
        self.mesh: Mesh | None = None
        self.pids: dict[int, str] = {}  # every pid of the mesh seen during the run -> what it was
        self.counters: dict[int, dict[str, int]] = {}  # control-plane pid -> its last counters
        self.status_samples: list[tuple[float, dict[str, Any]]] = []
        self.final: dict[str, Req] = {}
        self.leaked: dict[int, str] = {}
        self.msm_rc: int | None = None
        self.stop_seconds: float | None = None
        self.setup_s = 0.0
        self.t0_wall = ""
        self.stall_dumps: list[str] = []
        self.files: dict[str, str] = {}  # model -> its model file

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- set-up ------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.pvc.mkdir(parents=True)
        self.manifests.mkdir()
        samples = self.root / "samples"
        ensure_sample_models(samples, with_xgboost=False)
        svm, logreg = samples / MNIST_SVM, samples / MNIST_LOGREG
        total = 0
        for i, m in enumerate(self.models):
            src = logreg if i % 4 == 3 else svm  # three SVMs (0.5 MB) for each tiny logistic regression
            self.files[m] = f"{m}.joblib"
            shutil.copyfile(src, self.pvc / self.files[m])
            total += int(src.stat().st_size * SIZE_MULTIPLIER)
            (self.manifests / f"{m}.yaml").write_text(isvc_yaml(m, self.files[m]))
        shutil.copyfile(svm, self.pvc / "m00-v2.joblib")  # the rolling update's new path
        shutil.copyfile(logreg, self.pvc / "takeover.joblib")
        shutil.copyfile(svm, self.root / "outside.joblib")  # a real model, outside the PVC
        self.capacity = max(int(svm.stat().st_size * SIZE_MULTIPLIER * 1.1),
                            int(total * self.args.fit / self.args.replicas))
        # the container's memory: the models' share plus memBufferBytes (the article's 128 MiB by
        # default), which copies still draining may use while their replacements load
        (self.manifests / "runtime.yaml").write_text(runtime_yaml(
            memory=str(self.capacity + self.args.mem_buffer), mem_buffer=self.args.mem_buffer,
            load_timeout_ms=30000))
        (self.manifests / "msm-local.yaml").write_text(local_config(self.pvc, self.args.replicas))
        self.total_model_bytes = total

    # -- process bookkeeping -----------------------------------------------------------------
    def _note_pids(self) -> None:
        assert self.mesh is not None
        with contextlib.suppress(OSError, ValueError):
            for inst in self.mesh.instances():
                for key in ("mlserver_pid", "adapter_pid"):
                    if inst.get(key):
                        self.pids.setdefault(int(inst[key]), f"{inst['id']} {key[:-4]}")
        cp = self.mesh.control_plane_pid()
        if cp:
            self.pids.setdefault(cp, "control plane")
        for p in self.mesh.envoy_pids():
            self.pids.setdefault(p, "envoy")

    def envoy_admin(self) -> str | None:
        """Envoy's admin address, from the bootstrap msm up wrote."""
        with contextlib.suppress(OSError):
            text = (self.state / "envoy-bootstrap.yaml").read_text()
            m = re.search(r"admin:\s*address:\s*socket_address:\s*\{[^}]*port_value:\s*(\d+)", text)
            if m:
                return f"http://127.0.0.1:{m.group(1)}"
        return None

    async def watch(self, stop: asyncio.Event) -> None:
        """Every second: the mesh's pids, and /status (counters per control-plane incarnation, and
        whether the gateway holds the current snapshot). When the gateway has been out of sync for
        ``STALL_DUMP_S``, what the control plane and Envoy say is saved into the state folder."""
        assert self.mesh is not None
        out_since: float | None = None
        dumped = False
        async with httpx.AsyncClient(timeout=3) as c:
            while not stop.is_set():
                await asyncio.to_thread(self._note_pids)
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    r = await c.get(f"http://127.0.0.1:{self.mesh.admin_port}/status")
                    st = r.json()
                    now = self.now()
                    self.status_samples.append((now, st))
                    cp = await asyncio.to_thread(self.mesh.control_plane_pid)
                    if cp:
                        self.counters[cp] = dict(st.get("counters") or {})
                    clients = (st.get("gateway") or {}).get("clients") or []
                    synced = bool(clients) and all(x.get("in_sync") for x in clients)
                    if synced:
                        out_since, dumped = None, False
                    elif out_since is None:
                        out_since = now
                    elif now - out_since >= STALL_DUMP_S and not dumped:
                        dumped = True
                        await self._dump_stall(c, st, out_since)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def _dump_stall(self, c: httpx.AsyncClient, st: dict[str, Any], since: float) -> None:
        path = self.state / f"faults-gateway-stall-{since:.0f}s.json"
        dump: dict[str, Any] = {"out_of_sync_since_s": since, "seen_at_s": self.now(),
                                "gateway": st.get("gateway")}
        admin = self.envoy_admin()
        if admin:
            for what in ("/clusters?format=json", "/config_dump?include_eds"):
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    dump[what] = (await c.get(admin + what, timeout=10)).json()
        await asyncio.to_thread(path.write_text, json.dumps(dump, indent=1))
        self.stall_dumps.append(str(path))

    async def status(self) -> dict[str, Any]:
        assert self.mesh is not None
        async with httpx.AsyncClient(timeout=3) as c:
            r = await c.get(f"http://127.0.0.1:{self.mesh.admin_port}/status")
            r.raise_for_status()
            return r.json()

    async def settled(self, limit: float) -> float:
        """Wait (at most ``limit`` s) until every instance is up and the gateway in sync; the wait."""
        start = time.monotonic()
        while time.monotonic() - start < limit:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                st = await self.status()
                insts = st["instances"]
                clients = st["gateway"]["clients"]
                if (len(insts) == self.args.replicas and all(i.get("up", True) for i in insts.values())
                        and clients and all(x["in_sync"] for x in clients)):
                    return time.monotonic() - start
            await asyncio.sleep(0.5)
        return time.monotonic() - start

    # -- traffic -----------------------------------------------------------------------------
    async def one(self, c: httpx.AsyncClient, model: str) -> None:
        assert self.mesh is not None
        r = Req(t=self.now(), model=model)
        self.requests.append(r)
        start = time.monotonic()
        try:
            resp = await c.post(f"{self.mesh.rest}/v2/models/{model}/infer", content=DIGIT_8)
            r.latency = time.monotonic() - start
            r.status = resp.status_code
            if resp.status_code == 200:
                body = resp.json()
                r.served = body.get("modelName") or body.get("model_name") or ""
                pred = _prediction(body)
                r.ok = pred == 8
                if not r.ok:
                    r.error = f"answered {pred!r}, not 8: {resp.text[:200]}"
            else:
                r.error = resp.text[:300]
        except httpx.TimeoutException as e:
            r.latency = time.monotonic() - start
            r.error = f"{type(e).__name__} after {self.args.timeout:.0f}s"
        except (httpx.HTTPError, ValueError) as e:
            r.latency = time.monotonic() - start
            r.error = f"{type(e).__name__}: {e}"[:300]

    async def traffic(self, stop: asyncio.Event) -> None:
        rng = random.Random(self.args.seed + 1)
        pending: set[asyncio.Task[None]] = set()
        limits = httpx.Limits(max_connections=self.args.max_in_flight, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=self.args.timeout, limits=limits) as c:
            next_t = time.monotonic()
            while not stop.is_set():
                next_t += rng.expovariate(self.args.rate)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_t - time.monotonic()))
                if stop.is_set():
                    break
                model = rng.choices(self.models, self.weights)[0]
                if len(pending) >= self.args.max_in_flight:
                    self.skipped += 1
                    continue
                task = asyncio.create_task(self.one(c, model))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=self.args.timeout + 5)

    # -- faults ------------------------------------------------------------------------------
    def _holder(self, st: dict[str, Any], model: str) -> str | None:
        m = st["models"].get(model) or {}
        rev = m.get("active_revision")
        for inst, phase in (m.get("revisions") or {}).get(rev, {}).items():
            if phase == "ready":
                return inst
        return None

    async def faults_task(self, stop: asyncio.Event) -> None:
        assert self.mesh is not None
        killed_runtime: str | None = None
        for frac, kind in SCHEDULE:
            if kind in self.args.skip:
                continue
            at = frac * self.args.duration
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, at - self.now()))
            if stop.is_set():
                return
            waited = 0.0
            if kind.startswith("kill-"):
                waited = await self.settled(self.args.settle)
            f = Fault(kind, self.now(), waited=waited)
            try:
                if kind in ("kill-mlserver", "kill-adapter"):
                    st = await self.status()
                    ids = sorted(st["instances"])
                    if kind == "kill-mlserver":
                        holders = (self._holder(st, m) for m in self.models)  # most popular first
                        victim = next((h for h in holders if h), None) or self.rng.choice(ids)
                        killed_runtime = victim
                    else:
                        others = [i for i in ids if i != killed_runtime]
                        victim = others[0] if others else self.rng.choice(ids)
                    inst = next(i for i in self.mesh.instances() if i["id"] == victim)
                    key = "mlserver_pid" if kind == "kill-mlserver" else "adapter_pid"
                    held = sorted({c["model"] for c in st["instances"][victim]["loaded"].values()
                                   if c["phase"] == "ready"})
                    single = [m for m in held
                              if len([i for i, p in st["models"][m]["revisions"].get(
                                  st["models"][m]["active_revision"], {}).items() if p == "ready"]) == 1]
                    f.t = self.now()
                    os.kill(int(inst[key]), signal.SIGKILL)
                    f.detail = (f"{victim} {key[:-4]} pid {inst[key]}; it held {len(held)} models "
                                f"({len(single)} with no other copy): {', '.join(held)}")
                    self._recovery_later(f, rf"runtime replica {re.escape(victim)} back")
                elif kind == "kill-control-plane":
                    pid = await asyncio.to_thread(self.mesh.control_plane_pid)
                    assert pid, "no control-plane process found"
                    f.t = self.now()
                    os.kill(pid, signal.SIGKILL)
                    f.detail = f"pid {pid}"
                    self._recovery_later(f, r"control plane ready")
                elif kind == "kill-envoy":
                    pids = await asyncio.to_thread(self.mesh.envoy_pids)
                    assert pids, "no envoy process found"
                    f.t = self.now()
                    for p in pids:
                        os.kill(p, signal.SIGKILL)
                    f.detail = f"pid {', '.join(map(str, pids))}"
                    self._recovery_later(f, r"envoy gateway back")
                elif kind == "edit-manifest":
                    await self._edit(f)
                elif kind == "hostile-manifests":
                    await self._hostile(f)
                elif kind == "remove-hostile":
                    await self._remove_hostile(f)
            except Exception as e:
                f.detail += f" (the fault itself failed: {type(e).__name__}: {e})"
            self.faults.append(f)
            print(f"[{f.t:7.1f}s] fault {f.kind}: {f.detail}"
                  + (f" (waited {f.waited:.1f}s for the mesh to settle)" if f.waited > 0.6 else ""),
                  flush=True)

    def _recovery_later(self, f: Fault, pattern: str) -> None:
        f.recovered_how = f"msm up: /{pattern}/"
        f.checks.append(f"pattern:{pattern}")

    async def _wait_status(self, pred: Any, limit: float) -> tuple[float | None, dict[str, Any]]:
        start = time.monotonic()
        st: dict[str, Any] = {}
        while time.monotonic() - start < limit:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                st = await self.status()
                if pred(st):
                    return self.now(), st
            await asyncio.sleep(0.25)
        return None, st

    async def _edit(self, f: Fault) -> None:
        model = self.models[0]
        old = (await self.status())["models"][model]["active_revision"]
        f.t = self.now()
        (self.manifests / f"{model}.yaml").write_text(isvc_yaml(model, "m00-v2.joblib"))
        f.detail = f"{model}: storage path {self.files[model]} -> m00-v2.joblib (a new revision)"

        def moved(s: dict[str, Any]) -> bool:
            m = s["models"][model]
            return m["active_revision"] != old and m["target_revision"] == m["active_revision"]

        async def follow() -> None:
            t, st = await self._wait_status(moved, 60)
            f.recovered = t
            f.recovered_how = "the new revision takes the traffic (/status)"
            if t is None:
                f.checks.append("the new revision never took the traffic within 60 s: "
                                f"{st.get('models', {}).get(model)}")
            else:
                new = st["models"][model]["active_revision"]
                f.checks.append(f"{old} -> {new} after {t - f.t:.1f}s")
                t2, _ = await self._wait_status(
                    lambda s: all(old not in i["loaded"] for i in s["instances"].values()), 60)
                f.checks.append(f"old revision unloaded everywhere after {t2 - f.t:.1f}s" if t2
                                else "old revision still loaded 60 s later")
        asyncio.get_running_loop().create_task(follow())

    async def _hostile(self, f: Fault) -> None:
        d = self.manifests
        laughs = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
        laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
        bomb = ("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: bomb\n"
                "spec:\n  predictor:\n    model:\n      modelFormat: {name: sklearn}\n"
                "      storage: {parameters: {type: pvc, name: my-models-pvc}, path: m01.joblib}\n"
                + "\n".join(f"x{line}" for line in laughs) + "\n")
        escape = isvc_yaml("escape", "../outside.joblib")
        huge = isvc_yaml("huge", "m01.joblib") + "# " + "x" * (3 * 1024 * 1024) + "\n"
        victim = self.models[1]
        takeover = isvc_yaml(victim, "takeover.joblib").replace("namespace: modelmesh-serving",
                                                                  "namespace: other-team")
        before = (await self.status())["models"][victim]["active_revision"]
        f.t = self.now()
        (d / "bomb.yaml").write_text(bomb)
        (d / "escape.yaml").write_text(escape)
        (d / "huge.yaml").write_text(huge)
        (d / "a-takeover.yaml").write_text(takeover)
        f.detail = (f"bomb.yaml (alias bomb, 9^10 nodes), escape.yaml (storage ../outside.joblib), "
                    f"huge.yaml ({(d / 'huge.yaml').stat().st_size / 1e6:.1f} MB), "
                    f"a-takeover.yaml ({victim} from namespace other-team)")

        async def follow() -> None:
            t, st = await self._wait_status(
                lambda s: all(any(n in k for k in s.get("manifest_errors") or {})
                              for n in ("bomb.yaml", "escape", "huge.yaml", "a-takeover.yaml")), 30)
            f.recovered = t
            f.recovered_how = "all four reported as manifest problems (/status)"
            errs = st.get("manifest_errors") or {}
            for k, v in sorted(errs.items()):
                f.checks.append(f"reported {k}: {str(v)[:220]}")
            if t is None:
                f.checks.append("NOT all four reported within 30 s")
            after = st.get("models", {}).get(victim, {}).get("active_revision")
            f.checks.append(f"{victim} still served by {after}" if after == before
                            else f"{victim} revision CHANGED {before} -> {after}")
            for name in ("escape", "huge", "bomb"):
                f.checks.append(f"{name} is a model: {name in st.get('models', {})}")
            async with httpx.AsyncClient(timeout=10) as c:
                assert self.mesh is not None
                for name in ("escape", "bomb", "huge"):
                    with contextlib.suppress(httpx.HTTPError):
                        r = await c.post(f"{self.mesh.rest}/v2/models/{name}/infer", content=DIGIT_8)
                        f.checks.append(f"POST /v2/models/{name}/infer -> {r.status_code}")
        asyncio.get_running_loop().create_task(follow())

    async def _remove_hostile(self, f: Fault) -> None:
        f.t = self.now()
        for name in HOSTILE_FILES:
            (self.manifests / name).unlink(missing_ok=True)
        f.detail = ", ".join(HOSTILE_FILES) + " deleted"

        async def follow() -> None:
            t, st = await self._wait_status(lambda s: not s.get("manifest_errors"), 30)
            f.recovered = t
            f.recovered_how = "no manifest problem left (/status)"
            if t is None:
                f.checks.append("problems still reported 30 s later: "
                                f"{list(st.get('manifest_errors') or {})}")
        asyncio.get_running_loop().create_task(follow())

    # -- end ---------------------------------------------------------------------------------
    async def final_check(self) -> None:
        """Each model, one after the other: up to 3 tries, 5 s apart."""
        assert self.mesh is not None
        async with httpx.AsyncClient(timeout=60) as c:
            for m in self.models:
                for _attempt in range(3):
                    r = Req(t=self.now(), model=m)
                    start = time.monotonic()
                    try:
                        resp = await c.post(f"{self.mesh.rest}/v2/models/{m}/infer", content=DIGIT_8)
                        r.status = resp.status_code
                        r.ok = resp.status_code == 200 and _prediction(resp.json()) == 8
                        r.error = "" if r.ok else resp.text[:200]
                    except (httpx.HTTPError, ValueError) as e:
                        r.error = f"{type(e).__name__}: {e}"[:200]
                    r.latency = time.monotonic() - start
                    self.final[m] = r
                    if r.ok:
                        break
                    await asyncio.sleep(5)

    def stop_mesh(self) -> None:
        """SIGTERM msm up (as Ctrl-C), then look for anything of the run still running."""
        assert self.mesh is not None and self.mesh.proc is not None
        self._note_pids()
        proc = self.mesh.proc
        start = time.monotonic()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            self.msm_rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            self.msm_rc = None
            self.leaked[proc.pid] = "msm up itself (no exit 90 s after SIGTERM)"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.stop_seconds = time.monotonic() - start
        time.sleep(1.0)  # let the kernel reap what msm up's last signals ended
        for pid, what in self.pids.items():
            if _alive(pid):
                self.leaked[pid] = what
        for pid, cmd in scan_proc(str(self.root)).items():
            if _alive(pid):
                self.leaked.setdefault(pid, cmd[:200])
        for pid in self.leaked:  # never leave one behind, even when reporting it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def run(self) -> None:
        self.mesh = Mesh(self.manifests, self.state)
        t = time.monotonic()
        await asyncio.to_thread(self.mesh.start)
        self.setup_s = time.monotonic() - t
        print(f"msm up ready in {self.setup_s:.1f}s (REST {self.mesh.rest}); traffic for "
              f"{self.args.duration:.0f}s at {self.args.rate:g} req/s over {len(self.models)} models",
              flush=True)
        self.t0 = time.monotonic()
        self.t0_wall = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        stop_traffic, stop_watch = asyncio.Event(), asyncio.Event()
        watcher = asyncio.create_task(self.watch(stop_watch))
        faults = asyncio.create_task(self.faults_task(stop_traffic))
        traffic = asyncio.create_task(self.traffic(stop_traffic))
        await asyncio.sleep(self.args.duration)
        stop_traffic.set()
        await asyncio.gather(traffic, faults)
        self.traffic_end = self.now()
        await asyncio.sleep(2.0)  # the fault followers finish their last checks
        await self.final_check()
        stop_watch.set()
        await watcher


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def analyse(run: FaultRun) -> dict[str, Any]:
    mesh = run.mesh
    assert mesh is not None
    faults = sorted(run.faults, key=lambda f: f.t)
    for f in faults:  # recoveries seen in msm up's output
        for c in list(f.checks):
            if c.startswith("pattern:"):
                f.checks.remove(c)
                at = mesh.line_after(f.t + run.t0, c[len("pattern:"):])
                f.recovered = None if at is None else at - run.t0
    reqs = sorted(run.requests, key=lambda r: r.t)
    done = [r for r in reqs if r.latency is not None]
    fails = sorted((r for r in done if not r.ok), key=lambda r: r.end)

    def fault_before(t: float) -> Fault | None:
        before = [f for f in faults if f.t <= t]
        return before[-1] if before else None

    by_fault: dict[str, list[Req]] = defaultdict(list)
    for r in fails:
        f = fault_before(r.end)  # the fault before the failure was seen
        by_fault[f.kind if f else "before any fault"].append(r)
    windows = []
    for f in faults:
        mine = by_fault.get(f.kind, [])
        first = mine[0].end - f.t if mine else None
        last = mine[-1].end - f.t if mine else None
        end = max([x for x in (f.recovered, mine[-1].end if mine else None) if x is not None], default=f.t)
        windows.append((f, mine, first, last, end))
    inside = [(f.t, end) for f, _, _, _, end in windows]
    ok = [r for r in done if r.ok]
    ok_out = [r for r in ok if not any(r.t <= b and r.end >= a for a, b in inside)]  # no overlap
    lost = [m for m, r in run.final.items() if not r.ok]
    last_ok: dict[str, float] = {}
    for r in ok:
        last_ok[r.model] = max(last_ok.get(r.model, 0.0), r.end)
    last_fault = max((f.t for f in faults), default=0.0)
    silent = [m for m in run.models if last_ok.get(m, -1.0) < last_fault]
    counters: dict[str, int] = defaultdict(int)
    for c in run.counters.values():
        for k, v in c.items():
            counters[k] += int(v)
    out_of_sync: list[tuple[float, float]] = []  # (from, to) with the gateway not holding the snapshot
    start: float | None = None
    for t, st in run.status_samples:
        clients = (st.get("gateway") or {}).get("clients") or []
        synced = bool(clients) and all(x.get("in_sync") for x in clients)
        if not synced and start is None:
            start = t
        elif synced and start is not None:
            out_of_sync.append((start, t))
            start = None
    if start is not None:
        out_of_sync.append((start, run.status_samples[-1][0]))
    return {"out_of_sync": out_of_sync,
            "reqs": reqs, "done": done, "fails": fails, "by_fault": by_fault, "windows": windows,
            "ok": ok, "ok_out": ok_out, "lost": lost, "counters": dict(counters),
            "silent": silent, "last_ok": last_ok}


def report(run: FaultRun, a: dict[str, Any], cmd: str) -> tuple[str, str]:
    """(the text for stdout, the markdown section)."""
    args = run.args
    out: list[str] = []
    md: list[str] = []
    done, fails, ok, ok_out = a["done"], a["fails"], a["ok"], a["ok_out"]
    lat = [r.latency for r in ok]
    lat_out = [r.latency for r in ok_out]
    sent = len(a["reqs"])
    out.append("")
    out.append(f"command: {cmd}")
    out.append(f"models {len(run.models)} (Zipf s={args.zipf}), {args.replicas} replicas of "
               f"{run.capacity / 1e6:.2f} MB each (memBufferBytes {args.mem_buffer}) for "
               f"{run.total_model_bytes / 1e6:.2f} MB of models (estimated), rate {args.rate:g}/s, "
               f"{args.duration:.0f}s, seed {args.seed}")
    out.append(f"traffic started at {run.t0_wall} (local time of the logs in {run.state}); t = 0 below")
    out.append(f"msm up ready in {run.setup_s:.1f}s; stopped in "
               f"{'-' if run.stop_seconds is None else f'{run.stop_seconds:.1f}'}s, exit {run.msm_rc}")
    if sent > len(done):
        out.append(f"requests still open when the run ended (not counted below): {sent - len(done)}")
    out.append(f"requests sent {sent}, answered 8: {len(ok)}, failed {len(fails)} "
               f"({100 * len(fails) / max(1, len(done)):.2f} %), not sent (client at --max-in-flight): "
               f"{run.skipped}")
    out.append(f"latency of answered requests: p50 {ms(pct(lat, .5))} ms, p99 {ms(pct(lat, .99))} ms, "
               f"p99.9 {ms(pct(lat, .999))} ms, max {ms(max(lat) if lat else None)} ms ({len(lat)} requests)")
    out.append(f"  outside fault windows: p50 {ms(pct(lat_out, .5))} ms, p99 {ms(pct(lat_out, .99))} ms, "
               f"p99.9 {ms(pct(lat_out, .999))} ms ({len(lat_out)} requests)")
    c = a["counters"]
    out.append(f"placement (summed over control-plane incarnations): loads {c.get('loads', '-')}, "
               f"unloads {c.get('unloads', '-')}, evictions {c.get('evictions', '-')}, "
               f"load failures {c.get('load_failures', '-')}")
    long = [(a_, b_) for a_, b_ in a["out_of_sync"] if b_ - a_ >= 2.0]
    out.append("gateway out of sync with the control plane's snapshot for 2 s or more (/status, sampled "
               "every second): "
               + (", ".join(f"{x:.1f} to {y:.1f}s ({y - x:.0f}s)" for x, y in long) or "never"))
    for d in run.stall_dumps:
        out.append(f"  saved: {d}" + ("" if args.keep else " (deleted with the run's folder: use --keep)"))
    out.append("")
    out.append("faults (t = seconds since traffic start; a failure belongs to the last fault before its "
               "answer came; window = fault → max(recovered, last failure)):")
    rows = []
    for f, mine, first, last, end in a["windows"]:
        rec = "-" if f.recovered is None else f"+{f.recovered - f.t:.1f}s"
        out.append(f"  [{f.t:6.1f}s] {f.kind}: {f.detail}")
        out.append(f"      recovered {rec} ({f.recovered_how}); failures {len(mine)}"
                   + (f", first +{first:.2f}s, last +{last:.2f}s" if mine else "")
                   + f"; window {end - f.t:.1f}s"
                   + (f"; waited {f.waited:.1f}s to settle" if f.waited > 0.6 else ""))
        for ch in f.checks:
            out.append(f"      {ch}")
        classes: dict[str, list[Req]] = defaultdict(list)
        for r in mine:
            classes[failure_class(r)].append(r)
        for cls, rs in sorted(classes.items(), key=lambda kv: -len(kv[1])):
            out.append(f"      {len(rs):4d} x {cls} (+{rs[0].end - f.t:.2f}s … +{rs[-1].end - f.t:.2f}s; "
                       f"models {', '.join(sorted({r.model for r in rs}))})")
        rows.append((f, mine, first, last, end, rec, classes))
    pre = a["by_fault"].get("before any fault", [])
    if pre:
        out.append(f"  before any fault: {len(pre)} failures")
        classes = defaultdict(list)
        for r in pre:
            classes[failure_class(r)].append(r)
        for cls, rs in sorted(classes.items(), key=lambda kv: -len(kv[1])):
            out.append(f"      {len(rs):4d} x {cls} (t {rs[0].end:.2f}s … {rs[-1].end:.2f}s)")
    out.append("")
    out.append("every failure (seen at t since start, relative to the fault before it; model, when sent, "
               "latency, status, error):")
    for r in fails[: args.list_failures]:
        f = next((f for f in reversed(sorted(run.faults, key=lambda f: f.t)) if f.t <= r.end), None)
        rel = f"+{r.end - f.t:6.2f}s after {f.kind:18s}" if f else f"{'before any fault':32s}"
        out.append(f"  {r.end:7.2f}s {rel} {r.model} sent {r.t:7.2f}s lat {ms(r.latency)}ms "
                   f"{failure_class(r)}")
    if len(fails) > args.list_failures:
        out.append(f"  … and {len(fails) - args.list_failures} more")
    out.append("")
    out.append(f"models lost (no answer of 8 in the final check, 3 tries each): {len(a['lost'])}"
               + (f": {', '.join(a['lost'])}" if a["lost"] else ""))
    for m in a["lost"]:
        out.append(f"  {m}: {failure_class(run.final[m])}")
    out.append("models with no answer of 8 during the traffic after the last fault: "
               + (", ".join(f"{m} (last at {a['last_ok'].get(m, float('nan')):.1f}s)" for m in a["silent"])
                  or "none"))
    out.append(f"processes leaked after msm up stopped: {len(run.leaked)}"
               + "".join(f"\n  pid {p}: {w}" for p, w in run.leaked.items()))
    kinds: dict[str, int] = defaultdict(int)
    for w in run.pids.values():
        kinds[w.split(" ")[-1] if w.startswith("mlserver-") else w] += 1
    out.append(f"processes of the mesh seen during the run: {len(run.pids)} "
               f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")

    # markdown
    md.append(f"```\n{cmd}\n```\n")
    md.append(f"{len(run.models)} models (Zipf s = {args.zipf}) on {args.replicas} MLServer replicas of "
              f"{run.capacity / 1e6:.2f} MB each (memBufferBytes {args.mem_buffer}; "
              f"{run.total_model_bytes / 1e6:.2f} MB of models, "
              f"estimated: about {100 * args.fit:.0f} % fit at once); {args.rate:g} requests/s (Poisson) for "
              f"{args.duration:.0f} s; seed {args.seed}. `msm up` was ready in {run.setup_s:.0f} s and "
              f"stopped in {'-' if run.stop_seconds is None else f'{run.stop_seconds:.1f}'} s after SIGTERM "
              f"(exit {run.msm_rc}).\n")
    md.append("| requests sent | answered 8 | failed | not sent (client cap) | models lost "
              "| processes leaked |")
    md.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
    md.append(f"| {sent} | {len(ok)} | {len(fails)} ({100 * len(fails) / max(1, len(done)):.2f} %) | "
              f"{run.skipped} | {len(a['lost'])} | {len(run.leaked)} |\n")
    md.append("| latency of answered requests | n | p50 ms | p99 ms | p99.9 ms | max ms |")
    md.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    md.append(f"| all | {len(lat)} | {ms(pct(lat, .5))} | {ms(pct(lat, .99))} | {ms(pct(lat, .999))} | "
              f"{ms(max(lat) if lat else None)} |")
    md.append(f"| outside fault windows | {len(lat_out)} | {ms(pct(lat_out, .5))} | "
              f"{ms(pct(lat_out, .99))} | {ms(pct(lat_out, .999))} | "
              f"{ms(max(lat_out) if lat_out else None)} |\n")
    md.append("Placement during the run (summed over control-plane incarnations): "
              f"{c.get('loads', '-')} loads, "
              f"{c.get('unloads', '-')} unloads, {c.get('evictions', '-')} evictions, "
              f"{c.get('load_failures', '-')} load failures.\n")
    md.append("Gateway out of sync with the control plane's snapshot for 2 s or more (sampled every second): "
              + (", ".join(f"{x:.0f} to {y:.0f} s" for x, y in long) or "never") + ".\n")
    md.append("| t s | fault | recovered | failures | first → last failure | window s | failure classes |")
    md.append("| ---: | --- | ---: | ---: | --- | ---: | --- |")
    if pre:
        md.append(f"| 0 | (before any fault) | | {len(pre)} | {pre[0].end:.1f} → {pre[-1].end:.1f} s | | "
                  + "; ".join(f"{len(rs)} x {cls.replace('|', '/')[:100]}" for cls, rs in _classes(pre))
                  + " |")
    for f, mine, first, last, end, rec, classes in rows:
        span = f"+{first:.1f} → +{last:.1f} s" if mine else "-"
        cls = "; ".join(f"{len(rs)} x {k.replace('|', '/')[:100]}"
                        for k, rs in sorted(classes.items(), key=lambda kv: -len(kv[1])))
        md.append(f"| {f.t:.1f} | {f.kind}: {f.detail.replace('|', '/')} | {rec} | {len(mine)} | {span} | "
                  f"{end - f.t:.1f} | {cls or '-'} |")
    md.append("")
    return "\n".join(out), "\n".join(md)


def _classes(rs: list[Req]) -> list[tuple[str, list[Req]]]:
    classes: dict[str, list[Req]] = defaultdict(list)
    for r in rs:
        classes[failure_class(r)].append(r)
    return sorted(classes.items(), key=lambda kv: -len(kv[1]))


def supervisor_lines(run: FaultRun) -> list[str]:
    assert run.mesh is not None
    skip = ("  ", "msm up: ready.")
    return [f"[{t - run.t0:7.1f}s] {line}" for t, line in run.mesh.timed
            if t >= run.t0 and not line.startswith(skip)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of traffic (default 120)")
    p.add_argument("--models", type=int, default=20, help="InferenceServices (default 20)")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second, Poisson (default 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of model popularity (default 1)")
    p.add_argument("--replicas", type=int, default=2, help="runtime replicas (default 2)")
    p.add_argument("--fit", type=float, default=0.6,
                   help="share of the models' estimated bytes the replicas hold together (default 0.6)")
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, s (default 30)")
    p.add_argument("--max-in-flight", type=int, default=256, help="open requests at most (default 256)")
    p.add_argument("--settle", type=float, default=45.0,
                   help="before a process kill, wait at most this long for the mesh to be whole (default 45)")
    p.add_argument("--skip", nargs="*", default=[], choices=[k for _, k in SCHEDULE], metavar="FAULT",
                   help="faults left out of the schedule: " + ", ".join(k for _, k in SCHEDULE))
    p.add_argument("--list-failures", type=int, default=300, help="failures listed one by one (default 300)")
    p.add_argument("--markdown", metavar="FILE", help="also write the results as a markdown section")
    p.add_argument("--mem-buffer", type=int, default=134217728,
                   help="the runtime's memBufferBytes (default the article's 134217728; 0: a load "
                        "waits until the copies evicted for it are unloaded)")
    p.add_argument("--keep", action="store_true", help="keep the run's folder (manifests, state, logs)")
    args = p.parse_args(argv)
    if args.models < 3 or args.duration < 30 or args.rate <= 0:
        p.error("at least 3 models, 30 s and a positive rate")
    cmd = "python bench/faults.py " + " ".join(sys.argv[1:] if argv is None else argv)
    root = Path(tempfile.mkdtemp(prefix="msm-faults-"))
    run = FaultRun(args, root)
    code = 0
    try:
        run.prepare()
        try:
            asyncio.run(run.run())
        except AssertionError as e:  # msm up did not get ready
            print(f"faults: {e}", file=sys.stderr)
            code = 2
        finally:
            if run.mesh is not None and run.mesh.proc is not None:
                run.stop_mesh()
        if code == 0:
            a = analyse(run)
            text, markdown = report(run, a, cmd.strip())
            print("\nmsm up said, during the run:")
            print("\n".join(supervisor_lines(run)))
            print(text)
            if args.markdown:
                Path(args.markdown).write_text(markdown + "\n")
                print(f"\nmarkdown: {args.markdown}")
            code = 1 if a["lost"] or run.leaked else 0
        elif run.leaked:
            print(f"processes leaked: {run.leaked}", file=sys.stderr)
    finally:
        if args.keep:
            with (root / "requests.jsonl").open("w") as f:  # every request, for a closer look
                for r in run.requests:
                    f.write(json.dumps(dataclasses.asdict(r)) + "\n")
            print(f"run folder kept: {root} (state and logs in {root / 'state'})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
