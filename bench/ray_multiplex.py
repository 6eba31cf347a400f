"""msm's placement against Ray Serve's model multiplexing, side by side on one request stream.

The peer a user would pick instead of msm for "many models, a few replicas" is Ray Serve's
``@serve.multiplexed``: a per-replica LRU of at most K models, requests routed to a replica that
has the model when one does. Both systems get, one after the other, in one run:

- the same ``--models`` scikit-learn random forests (digits, 10 to 49 trees, seeded), saved plain
  (``cheap`` loads) or zlib-compressed (``costlier`` loads: the same models cost more to load,
  and their files understate their memory);
- the same cache budget: ``--budget`` of the models' bytes per replica for msm (its estimate,
  size on disk x 1.25, as ModelMesh's), and ``--budget`` of the models' count per replica for
  Ray (``max_num_models_per_replica``); ``--replicas`` replicas each;
- the same open-loop stream: Poisson arrivals at ``--rate`` requests/s for ``--duration`` s, each
  to a model drawn from a Zipf law (s = ``--zipf``) over a seeded shuffle of the models.

Reported per system: requests, failed, p50 / p99 latency (and p99 without the first
``--warmup`` seconds, when both systems import scikit-learn at their first loads), model loads,
the share of requests served without a load, and the resident memory of all its processes
(largest sample, every 5 s). ``--samples FILE`` writes every answered request's latency (CSV).
The bound is the share of requests to the K most popular models: what a cache that kept exactly
those would serve without a load.

    .venv/bin/python bench/ray_multiplex.py --setup-ray      # once: .venv-ray (Ray's own venv)
    .venv/bin/python bench/ray_multiplex.py                  # both costs, 90 s each system
    .venv/bin/python bench/ray_multiplex.py --costs cheap --duration 30 --markdown /tmp/r.md

Ray runs from ``.venv-ray`` (``bench/ray_serve_app.py``): its dependencies are not msm's, and it
is a dependency of this benchmark only. Loopback only, free ports; a run takes about
2 x (``--duration`` + 40 s) per cost on 2 cores. docs/benchmarks.md has the latest numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "mesh"))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
from mesh_harness import DIGIT_8, LocalMeshProcess, isvc_yaml, local_config, runtime_yaml  # noqa: E402

from placement.local.ports import free_port  # noqa: E402

RAY_VENV = REPO / ".venv-ray"
RAY_VERSION = "2.60.0"
SIZE_MULTIPLIER = 1.25
PIXELS = json.loads(DIGIT_8)["inputs"][0]["contents"]["fp32_contents"]


# -- inputs --------------------------------------------------------------------------------------

def make_models(folder: Path, n: int, compress: bool) -> dict[str, int]:
    """``n`` random forests on the digits, ``m00.joblib`` …; name -> bytes on disk."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    sizes = {}
    for i in range(n):
        name = f"m{i:02d}"
        path = folder / f"{name}.joblib"
        if not path.exists():
            clf = RandomForestClassifier(n_estimators=10 + (i * 7) % 40, random_state=i, n_jobs=1).fit(x, y)
            joblib.dump(clf, path, compress=("zlib", 3) if compress else 0)
        sizes[name] = path.stat().st_size
    return sizes


def zipf_stream(names: list[str], rate: float, duration: float, s: float,
                seed: int) -> tuple[list[tuple[float, str]], list[str], list[float]]:
    """(offset, model) requests; the models by popularity; their probabilities."""
    rng = random.Random(seed)
    order = list(names)
    rng.shuffle(order)
    weights = [1.0 / (k + 1) ** s for k in range(len(order))]
    total = sum(weights)
    probs = [w / total for w in weights]
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return out, order, probs
        out.append((t, rng.choices(order, weights)[0]))


# -- measuring -----------------------------------------------------------------------------------

@dataclass
class Result:
    system: str
    cost: str
    samples: list[tuple[float, str, float]] = field(default_factory=list)  # (sent at, model, seconds)
    failed: list[tuple[float, str]] = field(default_factory=list)
    loads: int = 0
    rss_bytes: int = 0
    #: what -> (count, mean, median, p90), the quantiles interpolated in the histogram's buckets
    cold: dict[str, tuple[int, float, float, float]] = field(default_factory=dict)
    replays: dict[str, int] = field(default_factory=dict)  # held requests by replay path (msm)
    served: list[tuple[float, str, int]] = field(default_factory=list)  # (sent at, model, Ray replica)

    @property
    def requests(self) -> int:
        return len(self.samples) + len(self.failed)

    def pct(self, q: float, after_s: float = 0.0) -> float:
        """The q-quantile of the answered requests' latencies, of those sent ``after_s`` or later."""
        return quantile([lat for at, _, lat in self.samples if at >= after_s], q)


@dataclass
class ReplicaReplay:
    """Ray's run replayed from which replica answered each request (``second_replica_loads``)."""

    loads: int
    held_elsewhere: int  # loads of a model another replica held at that moment
    first_doubles: list[tuple[float, str, int]]  # the first of those: (s from the first send, model, rank)
    doubled_slots: float  # slots holding a model's second copy, averaged over the run


def second_replica_loads(served: list[tuple[float, str, int]], per_replica: int) -> ReplicaReplay:
    """Ray's loads replayed from which replica answered each request, in the order they were
    sent, each replica an LRU of ``per_replica`` models (as ``@serve.multiplexed``). A model loaded
    where another replica holds it takes a second slot, which stays while both get requests."""
    ranked = Counter(model for _, model, _ in served)
    rank = {model: i + 1 for i, (model, _) in enumerate(ranked.most_common())}
    caches: dict[int, OrderedDict[str, None]] = {}
    loads = held_elsewhere = 0
    doubles: list[tuple[float, str, int]] = []
    slot_seconds, start, last = 0.0, None, None
    for at, model, replica in sorted(served):
        start = at if start is None else start
        if last is not None:  # models held by more than one replica since the last request
            held = Counter(m for c in caches.values() for m in c)
            slot_seconds += (at - last) * sum(n - 1 for n in held.values())
        last = at
        cache = caches.setdefault(replica, OrderedDict())
        if model in cache:
            cache.move_to_end(model)
            continue
        loads += 1
        if any(model in c for r, c in caches.items() if r != replica):
            held_elsewhere += 1
            doubles.append((at - start, model, rank[model]))
        cache[model] = None
        if len(cache) > per_replica:
            cache.popitem(last=False)
    span = (last - start) if start is not None and last is not None and last > start else 1.0
    return ReplicaReplay(loads, held_elsewhere, doubles[:4], slot_seconds / span)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile by rank (no interpolation); NaN for no values."""
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def histograms(metrics_text: str) -> dict[str, tuple[int, float, float, float]]:
    """msm's cold-path histograms: name (with its phase) -> (count, mean, median, p90 from the buckets)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in ("msm_model_load_seconds", "msm_cold_request_seconds",
                               "msm_activator_replay_seconds"):
            continue
        series: dict[str, dict] = {}
        for s in family.samples:
            if s.labels.get("kind", "cold") != "cold":
                continue
            key = s.labels.get("phase", "replay" if "kind" in s.labels else "runtime load")
            d = series.setdefault(key, {"buckets": []})
            if s.name.endswith("_bucket"):
                d["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                d["count"] = s.value
            elif s.name.endswith("_sum"):
                d["sum"] = s.value
        for key, d in series.items():
            n = int(d.get("count", 0))
            if not n:
                continue
            buckets = sorted(d["buckets"])
            out[key] = (n, d["sum"] / n, bucket_quantile(buckets, n, 0.5), bucket_quantile(buckets, n, 0.9))
    return out


def replay_paths(metrics_text: str) -> dict[str, int]:
    """msm's held requests by how the activator replayed them (``msm_cold_replays``): direct, routes."""
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["path"]: int(s.value) for family in text_string_to_metric_families(metrics_text)
            if family.name == "msm_cold_replays" for s in family.samples if s.name.endswith("_total")}


def bucket_quantile(buckets: list[tuple[float, float]], n: int, q: float) -> float:
    """The q-quantile, interpolated within the bucket it falls in (Prometheus' histogram_quantile)."""
    lower, below = 0.0, 0.0
    rank = n * q
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if upper == float("inf") or cumulative == below:
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            status = (d / "status").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(d.name)] = int(line.split()[1]) * 1024
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


class RssSampler:
    def __init__(self, root: int, every_s: float = 5.0) -> None:
        self.root, self.every_s, self.peak = root, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, tree_rss(self.root))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.peak = max(self.peak, tree_rss(self.root))
        self._stop.set()
        self._thread.join(10)


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait, all


def wait_for_quiet(threshold: float = 0.9, longest_s: float = 60.0) -> float:
    """Wait (up to ``longest_s``) until the CPU is ``threshold`` idle over a second: a system
    stopped just before (Ray's daemons wind down for a while) must not slow the next one down.
    Returns the idle fraction of the last second."""
    deadline = time.monotonic() + longest_s
    while True:
        idle0, all0 = _cpu_times()
        time.sleep(1.0)
        idle1, all1 = _cpu_times()
        idle = (idle1 - idle0) / max(1, all1 - all0)
        if idle >= threshold or time.monotonic() >= deadline:
            return idle


async def drive(stream: list[tuple[float, str]], send: Callable, result: Result) -> None:
    """Send each request at its time (open loop), whatever the answers to earlier ones."""
    connector = aiohttp.TCPConnector(limit=500)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(offset: float, model: str) -> None:
            await asyncio.sleep(max(0.0, t0 + offset - loop.time()))
            start = loop.time()
            try:
                ok, why = await send(s, model)
            except (aiohttp.ClientError, TimeoutError) as e:
                ok, why = False, type(e).__name__
            if ok:
                result.samples.append((start - t0, model, loop.time() - start))
            else:
                result.failed.append((start - t0, f"{model}: {why}"[:200]))

        await asyncio.gather(*(one(t, m) for t, m in stream))


# -- the two systems -----------------------------------------------------------------------------

def run_msm(root: Path, models: Path, sizes: dict[str, int], args: argparse.Namespace,
            stream: list[tuple[float, str]], cost: str) -> Result:
    manifests = root / f"msm-{cost}"
    manifests.mkdir()
    capacity = int(args.budget * sum(b * SIZE_MULTIPLIER for b in sizes.values()))
    # the container's memory: the models' budget plus memBufferBytes, the headroom copies being
    # unloaded may still use (--mem-buffer; the article's runtime has 128 MiB)
    (manifests / "runtime.yaml").write_text(runtime_yaml(memory=str(capacity + args.mem_buffer),
                                                         mem_buffer=args.mem_buffer, load_timeout_ms=60_000))
    placement = "".join(f"  {k}: {v}\n" for k, v in args.placement)
    (manifests / "msm-local.yaml").write_text(local_config(models, args.replicas)
                                             + (f"placement:\n{placement}" if placement else ""))
    for name in sizes:
        (manifests / f"{name}.yaml").write_text(isvc_yaml(name, f"{name}.joblib"))
    extra = () if args.direct_replay else ("--no-direct-replay",)
    mesh = LocalMeshProcess(manifests, root / f"msm-{cost}-state", extra).start()
    settings = " ".join([f"{k}={v}" for k, v in args.placement] + list(extra))
    result = Result(f"msm ({settings})" if settings else "msm", cost)
    try:
        async def send(s: aiohttp.ClientSession, model: str) -> tuple[bool, str]:
            async with s.post(f"{mesh.rest}/v2/models/{model}/infer", data=DIGIT_8) as r:
                body = await r.read()
                return r.status == 200, f"{r.status} {body[:120]!r}"

        assert mesh.proc is not None
        with RssSampler(mesh.proc.pid) as rss:
            asyncio.run(drive(stream, send, result))
        result.rss_bytes = rss.peak
        result.loads = int(mesh.status()["counters"]["loads"])
        metrics = httpx.get(f"http://127.0.0.1:{mesh.admin_port}/metrics", timeout=10).text
        result.cold = histograms(metrics)
        result.replays = replay_paths(metrics)
    finally:
        mesh.stop()
    return result


def run_ray(root: Path, models: Path, args: argparse.Namespace, stream: list[tuple[float, str]],
            cost: str, per_replica: int) -> Result:
    python = RAY_VENV / "bin" / "python"
    stats = root / f"ray-{cost}-stats"
    stats.mkdir()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    log = open(root / f"ray-{cost}.log", "wb")
    proc = subprocess.Popen(
        [str(python), str(REPO / "bench" / "ray_serve_app.py"), "--models-dir", str(models),
         "--stats-dir", str(stats), "--port", str(port), "--replicas", str(args.replicas),
         "--models-per-replica", str(per_replica), "--temp-dir", temp],
        stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_SERVE_LOG_TO_STDERR": "0"})
    result = Result("Ray Serve", cost)
    try:
        ready = threading.Event()
        threading.Thread(target=lambda: ready.set() if proc.stdout and "READY" in proc.stdout.readline()
                         else None, daemon=True).start()
        if not ready.wait(240):
            raise RuntimeError(f"Ray Serve did not start; see {root / f'ray-{cost}.log'}")

        async def send(s: aiohttp.ClientSession, model: str) -> tuple[bool, str]:
            sent = time.monotonic()
            async with s.post(f"http://127.0.0.1:{port}/", json={"x": PIXELS},
                              headers={"serve_multiplexed_model_id": model}) as r:
                body = await r.read()
                if r.status == 200:
                    result.served.append((sent, model, int(json.loads(body)["replica"])))
                return r.status == 200, f"{r.status} {body[:120]!r}"

        with RssSampler(proc.pid) as rss:
            asyncio.run(drive(stream, send, result))
        result.rss_bytes = rss.peak
        result.loads = sum(len(p.read_text().splitlines()) for p in stats.glob("loads-*"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        subprocess.run(["pkill", "-9", "-f", temp], check=False)  # Ray's daemons that outlived it
        shutil.rmtree(temp, ignore_errors=True)
    return result


# -- the report ----------------------------------------------------------------------------------

def table(results: list[Result], probs: list[float], per_replica: int, args: argparse.Namespace) -> str:
    slots = min(len(probs), per_replica * args.replicas)
    lines = [f"Zipf s={args.zipf} over {args.models} models, {args.replicas} replicas each, "
             f"{args.rate:g} requests/s for {args.duration:g} s; budget {args.budget:.0%} of the models' "
             f"bytes per msm replica, {per_replica} models per Ray replica. Keeping the {per_replica} "
             f"most popular models would serve {sum(probs[:per_replica]):.0%} of the requests without a "
             f"load; the {slots} most popular ({args.replicas} replicas' slots, no model twice), "
             f"{sum(probs[:slots]):.0%}.", "",
             f"p50 and p99 of every request, and p99 of those sent after the first {args.warmup:g} s (both "
             f"systems' first loads import scikit-learn, about 1 s).", "",
             "| loads | system | requests | failed | p50 | p99 | p99 after warm-up | model loads "
             "| served without a load | RSS of all processes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        hit = 1 - r.loads / r.requests if r.requests else float("nan")
        lines.append(f"| {r.cost} | {r.system} | {r.requests:,} | {len(r.failed):,} "
                     f"| {r.pct(0.5) * 1000:.0f} ms | {r.pct(0.99) * 1000:.0f} ms "
                     f"| {r.pct(0.99, args.warmup) * 1000:.0f} ms | {r.loads:,} | {hit:.0%} "
                     f"| {r.rss_bytes / 1e9:.1f} GB |")
    for r in results:
        if r.served:
            rp = second_replica_loads(r.served, per_replica)
            first = ", ".join(f"{m} (rank {k}) at {t:.1f} s" for t, m, k in rp.first_doubles)
            lines += ["", f"{r.cost}: Ray's loads replayed from which replica answered each request "
                      f"(in send order, each replica an LRU of {per_replica}): {rp.loads:,} (it counted "
                      f"{r.loads:,}); {rp.held_elsewhere:,} of them of a model another replica held then"
                      + (f", the first {first}" if first else "") + f". A second copy held "
                      f"{rp.doubled_slots:.1f} of the {per_replica * args.replicas} slots on average."]
    cold = [r for r in results if r.cold]
    if cold:
        lines += ["", "msm's cold path (its histograms; median from the buckets, mean): the runtime's "
                  "loadModel call, and a held request's time in four phases: until the copy it waited "
                  "for loaded (queue and load), until a published view routed to it, until the gateway "
                  "ACKed that view, then its replay through the gateway (the request's own work "
                  "included).", "",
                  "| loads | what | count | median | p90 | mean |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in cold:
            for what in ("runtime load", "load", "publish", "ack", "replay"):
                if what in r.cold:
                    n, mean, median, p90 = r.cold[what]
                    label = what if what == "runtime load" else f"held request: {what}"
                    lines.append(f"| {r.cost} | {label} | {n:,} | {median * 1000:.1f} ms "
                                 f"| {p90 * 1000:.1f} ms | {mean * 1000:.1f} ms |")
        for r in cold:
            if r.replays:
                lines += ["", f"{r.cost}: held requests replayed straight to the copy whose load returned: "
                          f"{r.replays.get('direct', 0):,}; once the routes named it: "
                          f"{r.replays.get('routes', 0):,}."]
        lines += ["", "Beyond the load (sum of medians: the held request's load phase less the runtime's "
                  "load, then publish and ACK where it waited for them; then the replay as well):", ""]
        for r in cold:
            if all(k in r.cold for k in ("runtime load", "load")):
                outside = (r.cold["load"][2] - r.cold["runtime load"][2]
                           + sum(r.cold[k][2] for k in ("publish", "ack") if k in r.cold))
                replay = r.cold["replay"][2] if "replay" in r.cold else float("nan")
                lines.append(f"- {r.cost}: {outside * 1000:.1f} ms until the gateway routes to the copy; "
                             f"{(outside + replay) * 1000:.1f} ms with the replay")
    return "\n".join(lines)


def setup_ray() -> int:
    import sklearn

    if not (RAY_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(RAY_VENV)], check=True)
    pins = [f"ray[serve]=={RAY_VERSION}", f"scikit-learn=={sklearn.__version__}", "joblib"]
    subprocess.run([str(RAY_VENV / "bin" / "pip"), "install", "-q", *pins], check=True)
    print(f"Ray Serve {RAY_VERSION} ready in {RAY_VENV}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setup-ray", action="store_true", help=f"make {RAY_VENV.name} and exit")
    p.add_argument("--costs", nargs="+", choices=["cheap", "costlier"], default=["cheap", "costlier"])
    p.add_argument("--systems", nargs="+", choices=["msm", "ray"], default=["msm", "ray"])
    p.add_argument("--models", type=int, default=40)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--budget", type=float, default=0.4)
    p.add_argument("--mem-buffer", type=int, default=128 << 20,
                   help="msm's memBufferBytes (the article's 128 MiB; 0: a load waits for its evictions)")
    p.add_argument("--rate", type=float, default=25.0)
    p.add_argument("--duration", type=float, default=90.0)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--placement", nargs=2, action="append", default=[], metavar=("SETTING", "VALUE"),
                   help="an msm engine setting (msm-local.yaml's placement:), e.g. frequency_half_life_s 0")
    p.add_argument("--no-direct-replay", dest="direct_replay", action="store_false",
                   help="msm's activator replays only once the routes name the new copy (msm up's flag)")
    p.add_argument("--warmup", type=float, default=10.0,
                   help="also report p99 without the requests sent in the first this many seconds")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    p.add_argument("--samples", type=Path, default=None,
                   help="write every answered request here (CSV: cost, system, sent at s, model, latency ms)")
    p.add_argument("--ray-replicas", type=Path, default=None,
                   help="write which Ray replica answered each request here (CSV: cost, sent at s, "
                        "model, replica pid)")
    p.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    args = p.parse_args(argv)
    if args.setup_ray:
        return setup_ray()
    if "ray" in args.systems and not (RAY_VENV / "bin" / "python").exists():
        print(f"Ray's venv is missing: run {sys.argv[0]} --setup-ray first", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="msm-ray-bench-"))
    names = [f"m{i:02d}" for i in range(args.models)]
    stream, _, probs = zipf_stream(names, args.rate, args.duration, args.zipf, args.seed)
    per_replica = max(1, round(args.budget * args.models))
    results = []
    try:
        for cost in args.costs:
            models = root / f"models-{cost}"
            sizes = make_models(models, args.models, compress=cost == "costlier")
            for system in args.systems:
                idle = wait_for_quiet()
                print(f"{cost}: {system} … (CPU {idle:.0%} idle before it)", flush=True)
                r = (run_msm(root, models, sizes, args, stream, cost) if system == "msm"
                     else run_ray(root, models, args, stream, cost, per_replica))
                results.append(r)
                print(f"  {r.requests} requests, {len(r.failed)} failed, {r.loads} loads", flush=True)
                for t, why in r.failed[:5]:
                    print(f"    failed at {t:.1f}s: {why}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.samples:
        with args.samples.open("w") as f:
            f.write("cost,system,sent_s,model,latency_ms\n")
            for r in results:
                f.writelines(f"{r.cost},{r.system},{at:.4f},{m},{lat * 1000:.2f}\n"
                             for at, m, lat in r.samples)
    if args.ray_replicas:
        with args.ray_replicas.open("w") as f:
            f.write("cost,sent_s,model,replica\n")
            for r in results:
                start = min((at for at, _, _ in r.served), default=0.0)
                f.writelines(f"{r.cost},{at - start:.4f},{m},{pid}\n" for at, m, pid in sorted(r.served))
    out = table(results, probs, per_replica, args)
    cmd = "python bench/ray_multiplex.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + out + f"\n\n`{cmd.strip()}`")
    if args.markdown:
        args.markdown.write_text(out + f"\n\n`{cmd.strip()}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
