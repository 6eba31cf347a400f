"""Control-plane scale: snapshot build, bytes per change (SotW vs delta), RSS, convergence.

Not a test: run it by hand; each model count runs in its own process so RSS figures are its own.

    .venv/bin/python bench/xds_scale.py --models 1000 10000 50000 --instances 100

For each model count N (one revision per model, 2 copies over ``--instances`` instances):

- build: a full translation + snapshot build (every resource serialised), and the same for a
  one-model change through the publisher's incremental path; the longest event-loop stall seen
  while the publisher does either (it works in a worker thread);
- RSS of the control-plane process once the snapshot is built and served;
- with a real Envoy per protocol variant and layout: time to the first full ACK, then
  ``--changes`` one-model changes of two kinds: ``move`` (the probe model's copy moves to another
  instance: endpoints change) and ``split`` (its canary weight changes: its routes change). For
  each, the bytes the server sent for the change and the convergence time: from the publish call
  until a request through Envoy reaches the new copy (move) or the server has the ACK (split).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from placement.local.ports import free_port
from xds_server.bootstrap import render_bootstrap
from xds_server.cache import SnapshotCache
from xds_server.envoy_process import EnvoyProcess
from xds_server.mesh_view import Copy, Destination, MeshView, Model, Revision, RouteRule
from xds_server.publisher import SnapshotPublisher
from xds_server.server import XdsServer
from xds_server.snapshot import Snapshot
from xds_server.translate import GatewayOptions, translate

PROBE = "probe"


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def instances(n: int) -> list[Copy]:
    # nothing listens on these: only the probe model is ever requested
    return [Copy(f"i{i:03d}", "127.0.0.1", 20000 + 2 * i, 20001 + 2 * i) for i in range(n)]


def build_view(models: int, insts: list[Copy], probe_copy: Copy, weight: int) -> MeshView:
    out = []
    for m in range(models):
        name = f"model-{m:05d}"
        copies = (insts[m % len(insts)], insts[(m + 1) % len(insts)])
        out.append(Model(name, (Revision(f"{name}__1", copies=copies),)))
    revs = (Revision(f"{PROBE}__1", copies=(probe_copy,)), Revision(f"{PROBE}__2", copies=(probe_copy,)))
    split = RouteRule((Destination(f"{PROBE}__1", 100 - weight), Destination(f"{PROBE}__2", weight)))
    probe = Model(PROBE, revs, rules=(split,))
    return MeshView.of([*out, probe])


class Ticker:
    """Measures the longest event-loop stall while it runs."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - t - 0.001)

    def __enter__(self) -> Ticker:
        self.worst = 0.0
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()


async def backend(name: str) -> tuple[web.AppRunner, Copy]:
    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"copy": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, Copy(name, "127.0.0.1", port, free_port())


async def served_by(s: aiohttp.ClientSession, url: str, copy: str) -> float:
    """Poll through Envoy until ``copy`` answers; returns the time it first did."""
    while True:
        try:
            async with s.get(url) as r:
                if r.status == 200 and (await r.json())["copy"] == copy:
                    return time.perf_counter()
        except aiohttp.ClientError:
            pass


def sent_bytes(registry: CollectorRegistry, variant: str) -> float:
    total = 0.0
    for metric in registry.collect():
        if metric.name == "msm_xds_response_bytes":
            total += sum(s.value for s in metric.samples
                         if s.name.endswith("_total") and s.labels.get("variant") == variant)
    return total


async def one(models: int, n_instances: int, changes: int, variants: list[str], shards: list[int],
              envoy: bool) -> dict:
    insts = instances(n_instances)
    result: dict = {"models": models}
    runners = []
    a_runner, copy_a = await backend("a")
    b_runner, copy_b = await backend("b")
    runners += [a_runner, b_runner]
    view = build_view(models, insts, copy_a, 10)

    # -- build costs (no clients) ------------------------------------------------------------
    opts = GatewayOptions(rest_port=free_port(), grpc_port=free_port())
    t = time.perf_counter()
    resources = translate(view, opts)
    result["translate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    snap = Snapshot.build(resources)
    result["serialise_s"] = time.perf_counter() - t
    result["snapshot_mb"] = snap.size_bytes() / 1e6
    result["resources"] = sum(snap.counts().values())
    del resources, snap

    results_envoy = []
    for n_shards in shards:
        for variant in variants:
            opts = GatewayOptions(rest_port=free_port(), grpc_port=free_port(), subset_shards=n_shards)
            registry = CollectorRegistry()
            cache = SnapshotCache()
            server = XdsServer(cache, registry=registry)
            publisher = SnapshotPublisher(cache, opts, registry)
            with Ticker() as tick:
                t = time.perf_counter()
                await publisher.publish(view)
                full_build = time.perf_counter() - t
            row = {"variant": variant, "shards": n_shards, "publish_full_s": full_build,
                   "stall_full_ms": tick.worst * 1000}
            port = await server.start("127.0.0.1", 0)
            row["server_rss_mb"] = rss_mb()
            proc = None
            try:
                if envoy:
                    tmp = Path(tempfile.mkdtemp(prefix="msm-bench-"))
                    admin = free_port()
                    boot = tmp / "bootstrap.yaml"
                    boot.write_text(render_bootstrap("bench", "127.0.0.1", port, admin,
                                                     delta=variant == "delta"))
                    proc = EnvoyProcess(boot, admin, tmp / "envoy.log")
                    t = time.perf_counter()
                    await proc.start(timeout=900)
                    ok = await server.wait_for_ack(publisher.version, timeout=900)
                    row["first_sync_s"] = time.perf_counter() - t
                    row["first_sync_mb"] = sent_bytes(registry, variant) / 1e6
                    row["envoy_rss_mb"] = rss_mb(proc.proc.pid if proc.proc else "self")
                    assert ok, "Envoy did not ACK the first snapshot"
                url = f"http://127.0.0.1:{opts.rest_port}/v2/models/{PROBE}/ready"
                moves, splits = [], []
                async with aiohttp.ClientSession() as s:
                    current, weight = copy_a, 10
                    for i in range(changes):
                        # move: the probe's copy goes to the other backend
                        current = copy_b if current is copy_a else copy_a
                        view = build_view(models, insts, current, weight)
                        before = sent_bytes(registry, variant)
                        with Ticker() as tick:
                            t = time.perf_counter()
                            version = await publisher.publish(view)
                            built = time.perf_counter() - t
                            reached = await served_by(s, url, current.instance) - t if envoy else None
                            await server.wait_for_ack(version, timeout=120)
                            acked = time.perf_counter() - t
                        moves.append({"build_ms": built * 1000, "reach_ms": (reached or 0) * 1000,
                                      "ack_ms": acked * 1000, "stall_ms": tick.worst * 1000,
                                      "kb": (sent_bytes(registry, variant) - before) / 1000})
                        # split: the probe's canary weight changes
                        weight = 20 if weight == 10 else 10
                        view = build_view(models, insts, current, weight)
                        before = sent_bytes(registry, variant)
                        with Ticker() as tick:
                            t = time.perf_counter()
                            version = await publisher.publish(view)
                            built = time.perf_counter() - t
                            await server.wait_for_ack(version, timeout=120)
                            acked = time.perf_counter() - t
                        splits.append({"build_ms": built * 1000, "ack_ms": acked * 1000,
                                       "stall_ms": tick.worst * 1000,
                                       "kb": (sent_bytes(registry, variant) - before) / 1000})
                        del i
                for kind, rows in (("move", moves), ("split", splits)):
                    for key in rows[0]:
                        row[f"{kind}_{key}"] = statistics.median(r[key] for r in rows)
                row["server_rss_after_mb"] = rss_mb()
            finally:
                if proc is not None:
                    await proc.stop()
                await server.stop(0)
            results_envoy.append(row)
            print(json.dumps({"models": models, **row}), file=sys.stderr, flush=True)
    for r in runners:
        await r.cleanup()
    result["runs"] = results_envoy
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| models | resources | full translate s | full serialise s | snapshot MB |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['models']} | {r['resources']} | {r['translate_s']:.2f} "
                     f"| {r['serialise_s']:.2f} | {r['snapshot_mb']:.1f} |")
    head = ["models", "variant", "shards", "server RSS MB", "first sync s", "first sync MB", "Envoy RSS MB",
            "move: publish ms", "move: KB sent", "move: reaches Envoy ms", "move: ACK ms",
            "split: publish ms", "split: KB sent", "split: ACK ms", "worst loop stall ms (full / change)"]
    lines += ["", "| " + " | ".join(head) + " |",
              "| ---: | --- |" + " ---: |" * (len(head) - 2)]
    for r in results:
        for x in r["runs"]:
            lines.append(
                f"| {r['models']} | {x['variant']} | {x['shards']} | {x['server_rss_after_mb']:.0f} "
                f"| {x.get('first_sync_s', 0):.1f} | {x.get('first_sync_mb', 0):.1f} "
                f"| {x.get('envoy_rss_mb', 0):.0f} | {x['move_build_ms']:.0f} | {x['move_kb']:.1f} "
                f"| {x['move_reach_ms']:.0f} | {x['move_ack_ms']:.0f} "
                f"| {x['split_build_ms']:.0f} | {x['split_kb']:.1f} | {x['split_ack_ms']:.0f} "
                f"| {x['stall_full_ms']:.0f} / {max(x['move_stall_ms'], x['split_stall_ms']):.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--instances", type=int, default=100)
    p.add_argument("--changes", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=["delta", "sotw"], choices=["delta", "sotw"])
    p.add_argument("--shards", type=int, nargs="+", default=[1], help="subset_shards values to compare")
    p.add_argument("--no-envoy", action="store_true", help="control plane only (no Envoy)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        res = asyncio.run(one(args.one, args.instances, args.changes, args.variants, args.shards,
                              not args.no_envoy))
        print(json.dumps(res))
        return 0
    results = []
    for n in args.models:
        cmd = [sys.executable, __file__, "--one", str(n), "--instances", str(args.instances),
               "--changes", str(args.changes), "--variants", *args.variants,
               "--shards", *map(str, args.shards)] + (["--no-envoy"] if args.no_envoy else [])
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=os.environ)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
