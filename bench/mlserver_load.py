"""What a load costs in MLServer itself, beside ``joblib.load`` of the same file (issue 15).

Makes the Ray benchmark's random forests (``bench/ray_multiplex.py``), then, in one idle MLServer
(parallel_workers 0), loads each through the repository API with only its own
``model-settings.json`` visible, as msm's adapter does, while one client sends inference to the
first model (a request, then 4 ms of pause); prints the load's median and the inference latency
alone and during the loads. ``--threaded`` loads with ``bench/mlserver_threaded.py`` (the load off
MLServer's event loop) instead of MLServer's scikit-learn runtime. Loopback only; the MLServer
process is stopped at the end.

    .venv/bin/python bench/mlserver_load.py [--compress] [--threaded] [--models 40]
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

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from ray_multiplex import PIXELS, make_models, quantile  # noqa: E402

from placement.local.ports import free_port  # noqa: E402

IMPLEMENTATION = {False: "mlserver_sklearn.SKLearnModel", True: "mlserver_threaded.ThreadedSKLearnModel"}


async def _measure(base: str, repo: Path, files: list[Path], impl: str) -> tuple[list[float], list[float],
                                                                                list[float]]:
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            try:
                async with s.get(base + "/v2/health/ready") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)

        async def load(f: Path) -> float:
            d = repo / f.stem
            d.mkdir()
            settings = d / "model-settings.json"
            settings.write_text(json.dumps({"name": f.stem, "implementation": impl,
                                            "parameters": {"uri": str(f)}}))
            t = time.perf_counter()
            async with s.post(f"{base}/v2/repository/models/{f.stem}/load") as r:
                if r.status != 200:
                    raise RuntimeError(f"load {f.stem}: HTTP {r.status} {await r.text()}")
            settings.rename(d / ".loaded.json")  # out of the next load's repository scan
            return (time.perf_counter() - t) * 1000

        await load(files[0])  # imports scikit-learn in MLServer (about a second): not counted
        body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": PIXELS}]}
        latencies: list[float] = []
        done = asyncio.Event()

        async def client() -> None:
            while not done.is_set():
                t = time.perf_counter()
                async with s.post(f"{base}/v2/models/{files[0].stem}/infer", json=body) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"infer: HTTP {r.status}")
                latencies.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.004)

        task = asyncio.create_task(client())
        await asyncio.sleep(2)
        done.set()
        await task
        alone = list(latencies)
        latencies.clear()
        done.clear()
        task = asyncio.create_task(client())
        try:
            loads = [await load(f) for f in files[1:]]
        finally:
            done.set()
            await task
        return loads, alone, list(latencies)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=40)
    p.add_argument("--compress", action="store_true", help="zlib-compressed files (the 'costlier' loads)")
    p.add_argument("--threaded", action="store_true", help="load off MLServer's event loop")
    args = p.parse_args()
    import joblib

    with tempfile.TemporaryDirectory(prefix="msm-mlload-") as tmp:
        root = Path(tmp)
        names = sorted(make_models(root / "files", args.models, args.compress))
        files = [root / "files" / f"{n}.joblib" for n in names]
        direct = []
        for f in files:
            t = time.perf_counter()
            joblib.load(f)
            direct.append((time.perf_counter() - t) * 1000)
        repo = root / "repo"
        repo.mkdir()
        http = free_port()
        (repo / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": http, "grpc_port": free_port(), "metrics_port": free_port(),
            "parallel_workers": 0, "load_models_at_startup": False}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlserver"), "start", str(repo)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            loads, alone, during = asyncio.run(_measure(f"http://127.0.0.1:{http}", repo, files,
                                                        IMPLEMENTATION[args.threaded]))
        finally:
            proc.terminate()
            proc.wait(30)
    kind = ("zlib" if args.compress else "uncompressed") + (", loads in a thread" if args.threaded else "")
    print(f"{len(files)} models, {kind}: joblib.load median {statistics.median(direct[1:]):.1f} ms; "
          f"MLServer load median {statistics.median(loads):.1f} ms")
    print(f"inference alone: p50 {quantile(alone, 0.5):.1f} ms, p99 {quantile(alone, 0.99):.1f} ms "
          f"({len(alone)}); "
          f"during the loads: p50 {quantile(during, 0.5):.1f}, p90 {quantile(during, 0.9):.1f}, "
          f"max {max(during):.1f} ms ({len(during)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
