"""``msm up``: the whole mesh on one machine, in the foreground.

Three kinds of children, each with its own lifetime:
- runtime replicas (an MLServer plus msm's adapter each), started first and kept across
  control-plane restarts, so models stay loaded;
- the control plane (``msm control-plane``): xDS server, placement engine, activator, status;
  restarted if it dies, and it re-adopts what the runtimes hold;
- the Envoy gateway, bootstrapped to the control plane's ADS port; it keeps serving its last
  configuration while the control plane restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from msm.running import wait_for_listeners, wait_healthy
from msm.xds_stack import write_gateway_token
from placement.local.ports import free_port, port_in_use
from placement.local.processes import stop_process_group
from placement.local.runtime_process import RuntimeReplica, local_mesh_notes, write_instances_file
from xds_server.bootstrap import render_bootstrap
from xds_server.envoy_process import EnvoyProcess

SAMPLE_CURL = 'curl -X POST -k "http://127.0.0.1:{port}/v2/models/{model}/infer" -d @{body}'
SAMPLE_BODY = "examples/quickstart/digit-8.json"
ROLLOUT_STATE = "rollouts.json"  # in the state folder: the control plane's rollouts, across its restarts
EXAMPLE_BODY = "input.json"
"""An example folder's request body (the article's name for it), shown in the ``try`` line."""


def _say(msg: str) -> None:
    print(f"msm up: {msg}", flush=True)


def load_desired(directory: Path, pvc_flags: list[str]):
    """Resolve the manifests of ``directory`` once (for ``msm up`` and ``msm validate``)."""
    from placement.manifests.kserve import load_manifest_dir
    from placement.manifests.local_config import load_local_config

    config = load_local_config(directory, pvc_flags)
    return config, load_manifest_dir(directory, config)


def validate_dir(directory: Path, pvc_flags: list[str]) -> int:
    """``msm validate``: what msm makes of a folder of manifests, and every problem in it."""
    try:
        _, desired = load_desired(directory, pvc_flags)
    except (OSError, ValueError) as e:
        print(f"msm validate: {e}", file=sys.stderr)
        return 1
    for name, rt in sorted(desired.runtimes.items()):
        print(f"runtime {name}: formats {', '.join(rt.formats)}; {rt.server_type}")
    for name, m in sorted(desired.models.items()):
        print(f"model {name}: revision {m.revision_id}, runtime {m.runtime}, "
              f"{m.model_type} at {m.storage_path}")
    for host, policy in sorted(desired.traffic.items()):
        virtual = "" if host in desired.models else " (a virtual model: only the VirtualService names it)"
        print(f"route {host}: {policy.source}, {len(policy.rules)} rule(s){virtual}")
    for where, err in sorted(desired.errors.items()):
        print(f"error {where}: {err}", file=sys.stderr)
    return 1 if desired.errors else 0


class LocalMesh:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(args.dir).resolve()
        self.state_dir = Path(args.state_dir).resolve() if args.state_dir else self.dir / ".msm"
        self.replicas: list = []
        self.envoy: EnvoyProcess | None = None
        self.control_plane: asyncio.subprocess.Process | None = None
        self.envoy_admin_port = free_port()
        self.activator_ports = (free_port(), free_port())  # the same for every control-plane run
        self._stopping = asyncio.Event()
        self._cp_log = None
        self._startup_problems: dict[str, str] = {}
        self.token_file = self.state_dir / "gateway-token"
        self._backoff: dict[str, tuple[float, float]] = {}  # what -> (last restart, wait before the next)
        self.gateway_token: str | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            if not await self._start():
                return 1
            await self._supervise()
            return 0
        finally:
            await self._stop()

    async def _start(self) -> bool:
        args = self.args
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for port, what in ((args.rest_port, "REST"), (args.grpc_port, "gRPC"), (args.xds_port, "xDS"),
                           (args.admin_port, "admin")):
            if port_in_use(port):
                _say(f"port {port} ({what}) is already in use on 127.0.0.1; is another `msm up` running?")
                return False
        config, desired = await asyncio.to_thread(self._prepare)
        for where, err in sorted(desired.errors.items()):
            _say(f"manifest problem (skipped, the rest goes on): {where}: {err}")
            self._startup_problems[f"manifest {where}"] = str(err).replace("\n", "; ")
        runtimes = [rt for rt in desired.runtimes.values() if rt.server_type == "mlserver"]
        if not runtimes:
            _say(f"no usable ServingRuntime with builtInAdapter.serverType mlserver in {self.dir}")
            return False
        # the secret only msm's own gateway presents to the xDS server: other xDS clients are refused
        self.gateway_token = write_gateway_token(self.token_file)
        started = time.monotonic()
        await self._start_runtimes(runtimes, config)
        if self._stopping.is_set():
            return False
        _say(f"{len(self.replicas)} runtime replicas ready in {time.monotonic() - started:.1f}s")
        await self._start_control_plane()
        await self._start_envoy()
        await self._wait_gateway_configured(desired)
        self._print_ready(desired)
        return True

    def _prepare(self):
        from placement.local.samples import ensure_sample_set
        from placement.manifests.local_config import load_local_config

        config = load_local_config(self.dir, self.args.pvc)
        sample_dir = getattr(config, "sample_models_dir", None)
        if sample_dir is not None:
            made = ensure_sample_set(Path(sample_dir), config.sample_set)
            if made:
                _say(f"made sample models in {sample_dir}: {', '.join(str(p.name) for p in made)}")
        return load_desired(self.dir, self.args.pvc)

    async def _start_runtimes(self, runtimes, config) -> None:
        replicas = []
        for rt in runtimes:
            for note in local_mesh_notes(rt):
                _say(f"note: {note}")
            count = self.args.replicas or config.replicas_for(rt.name, rt.replicas)
            for i in range(count):
                replicas.append(
                    RuntimeReplica.for_runtime(rt, index=i, state_dir=self.state_dir / "runtimes",
                                               base_dir=self.dir))
        _say(f"starting {len(replicas)} runtime replicas: {', '.join(r.instance_id for r in replicas)}")

        async def start_one(replica) -> None:
            t = time.monotonic()
            await replica.start()
            self.replicas.append(replica)
            _say(f"  {replica.instance_id} ready in {time.monotonic() - t:.1f}s "
                 f"(REST {replica.rest_port}, gRPC {replica.grpc_port}, adapter {replica.adapter_port})")

        results = await asyncio.gather(*(start_one(r) for r in replicas), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and not self.replicas:
            raise RuntimeError(f"no runtime replica started: {errors[0]}")
        for e in errors:
            _say(f"  a runtime replica failed to start: {e}")
        write_instances_file(self.state_dir / "instances.json", self.replicas)
        # rollouts carry on across control-plane restarts within this run, not from an earlier run
        (self.state_dir / ROLLOUT_STATE).unlink(missing_ok=True)

    def _control_plane_cmd(self) -> list[str]:
        a = self.args
        cmd = [sys.executable, "-m", "msm.cli", "control-plane", str(self.dir),
               "--instances-file", str(self.state_dir / "instances.json"),
               "--rollout-state", str(self.state_dir / ROLLOUT_STATE),
               "--xds-port", str(a.xds_port), "--admin-port", str(a.admin_port),
               "--envoy-admin-port", str(self.envoy_admin_port),
               "--rest-port", str(a.rest_port), "--grpc-port", str(a.grpc_port)]
        for p in a.pvc:
            cmd += ["--pvc", p]
        if a.cluster_layout:
            cmd += ["--cluster-layout", a.cluster_layout]
        if a.subset_shards:
            cmd += ["--subset-shards", str(a.subset_shards)]
        if not a.direct_replay:
            cmd += ["--no-direct-replay"]
        return [*cmd, "--gateway-token-file", str(self.token_file),
                "--activator-rest-port", str(self.activator_ports[0]),
                "--activator-grpc-port", str(self.activator_ports[1])]

    async def _start_control_plane(self) -> None:
        if self._cp_log is None:
            self._cp_log = await asyncio.to_thread(open, self.state_dir / "control-plane.log", "ab")
        self.control_plane = await asyncio.create_subprocess_exec(
            *self._control_plane_cmd(), stdout=self._cp_log, stderr=self._cp_log, start_new_session=True)
        await wait_healthy(self.control_plane, self.args.admin_port, "control plane",
                           self.state_dir / "control-plane.log")
        _say(f"control plane ready: xDS 127.0.0.1:{self.args.xds_port}, "
             f"status http://127.0.0.1:{self.args.admin_port}/status")

    async def _start_envoy(self) -> None:
        bootstrap = self.state_dir / "envoy-bootstrap.yaml"
        bootstrap.touch(mode=0o600)  # it holds the gateway token
        bootstrap.chmod(0o600)
        bootstrap.write_text(render_bootstrap(node_id="msm-local-gateway", xds_host="127.0.0.1",
                                              xds_port=self.args.xds_port, admin_port=self.envoy_admin_port,
                                              gateway_token=self.gateway_token))
        self.envoy = EnvoyProcess(bootstrap, self.envoy_admin_port, self.state_dir / "envoy.log")
        await self.envoy.start()
        _say(f"envoy gateway live (admin 127.0.0.1:{self.envoy_admin_port})")

    async def _wait_gateway_configured(self, desired, timeout: float = 60.0) -> None:
        """Until the gateway's listeners are up (they come over xDS)."""
        assert self.envoy is not None
        await wait_for_listeners(self.envoy.admin_url, (self.args.rest_port, self.args.grpc_port), timeout,
                                 "the gateway did not receive its listeners from the control plane")

    def _print_ready(self, desired) -> None:
        a = self.args
        _say("ready.")
        print(f"  REST   http://127.0.0.1:{a.rest_port}/v2/models/<model>/infer", flush=True)
        print(f"  gRPC   127.0.0.1:{a.grpc_port} (inference.GRPCInferenceService, header mm-vmodel-id)")
        print(f"  status msm status   (http://127.0.0.1:{a.admin_port}/status; metrics at /metrics)")
        print(f"  logs   {self.state_dir}")
        if desired.models:
            model = sorted(desired.models)[0]
            body = self.dir / EXAMPLE_BODY
            shown_body = os.path.relpath(body) if body.is_file() else SAMPLE_BODY
            print(f"  try    {SAMPLE_CURL.format(port=a.rest_port, model=model, body=shown_body)}")
        print("  Ctrl-C stops everything.", flush=True)

    async def _report_changes(self, session: aiohttp.ClientSession, seen: dict[str, str]) -> None:
        """Print manifest problems and failed models as they appear and clear (from /status)."""
        try:
            async with session.get(f"http://127.0.0.1:{self.args.admin_port}/status",
                                   timeout=aiohttp.ClientTimeout(total=2)) as r:
                status = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        now: dict[str, str] = {}
        for where, err in (status.get("manifest_errors") or {}).items():
            now[f"manifest {where}"] = str(err).replace("\n", "; ")
        for name, m in (status.get("models") or {}).items():
            if m.get("failed"):
                now[f"model {name}"] = f"failed to load: {m.get('failure')}"
        for key, msg in sorted(now.items()):
            if seen.get(key) != msg:
                _say(f"problem: {key}: {msg}")
        for key in sorted(set(seen) - set(now)):
            _say(f"resolved: {key}")
        seen.clear()
        seen.update(now)

    async def _supervise(self) -> None:
        """Restart whatever dies (control plane, Envoy, a runtime replica) and say so; report problems.

        A replica comes back on its old ports when it can (the control plane then sees the
        instance up again, empty); on new ports, instances.json is rewritten and the control
        plane restarted to read it. Repeated crashes back off (1 s doubling to 60 s).
        """
        seen: dict[str, str] = dict(self._startup_problems)  # already printed
        async with aiohttp.ClientSession() as session:
            while not self._stopping.is_set():
                try:
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                except TimeoutError:
                    pass
                if self._stopping.is_set():
                    break
                if self.control_plane is not None and self.control_plane.returncode is not None:
                    _say(f"control plane exited ({self.control_plane.returncode}); restarting it")
                    await self._start_control_plane()
                if self.envoy is not None and self.envoy.exited():
                    await self._restart("envoy gateway", self._restart_envoy)
                for r in self.replicas:
                    if not r.running():
                        await self._restart(f"runtime replica {r.instance_id}",
                                            lambda r=r: self._restart_replica(r))
                await self._report_changes(session, seen)

    async def _restart(self, what: str, restart: Callable[[], Awaitable[None]]) -> None:
        """Restart ``what`` now, unless it crashed again soon after its last restart: then wait
        1 s, 2 s, 4 s … (at most 60 s) after that restart first."""
        now = time.monotonic()
        last, delay = self._backoff.get(what, (-math.inf, 0.0))
        if now < last + delay:
            return
        delay = min(60.0, max(1.0, delay * 2)) if now - last < 60 else 0.0
        self._backoff[what] = (now, delay)
        try:
            await restart()
        except Exception as e:  # it stays down; the next round tries again
            _say(f"{what} did not come back: {e}")

    async def _restart_envoy(self) -> None:
        assert self.envoy is not None
        _say(f"envoy gateway exited ({self.envoy.returncode()}); restarting it (it gets the whole current "
             "config from the control plane)")
        await self.envoy.stop()
        await self.envoy.start()
        _say("envoy gateway back")

    async def _restart_replica(self, r: RuntimeReplica) -> None:
        codes = ", ".join(f"{k} {'exited ' + str(v) if v is not None else 'still running'}"
                          for k, v in r.exit_codes().items())
        _say(f"runtime replica {r.instance_id} died ({codes}); its models are placed elsewhere; "
             "restarting it")
        same_ports = await r.restart()
        _say(f"runtime replica {r.instance_id} back (REST {r.rest_port}, gRPC {r.grpc_port}, "
             f"adapter {r.adapter_port})")
        write_instances_file(self.state_dir / "instances.json", self.replicas)  # new pids (and ports)
        if not same_ports:
            _say("its ports changed: restarting the control plane to pick them up")
            await self._stop_control_plane()
            await self._start_control_plane()

    async def _stop_control_plane(self) -> None:
        if self.control_plane is not None:
            await stop_process_group(self.control_plane, 10.0)

    async def _stop(self) -> None:
        _say("stopping")
        if self.envoy is not None:
            await self.envoy.stop()
        await self._stop_control_plane()
        await asyncio.gather(*(r.stop() for r in self.replicas), return_exceptions=True)
        if self._cp_log is not None:
            self._cp_log.close()
        _say("stopped")


def run_local_mesh(args: argparse.Namespace) -> int:
    return asyncio.run(LocalMesh(args).run())
