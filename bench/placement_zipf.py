"""Placement policy under a Zipf request stream: msm's engine vs plain LRU vs random placement.

A discrete-event simulation (no processes, no sleeping): more models than fit in the instances,
requests drawn from a Zipf distribution, Poisson arrivals. Not a test: run it by hand.

    .venv/bin/python bench/placement_zipf.py --models 500 --instances 10 --fit 0.3

Latency model, the same for every policy: an instance serves ``--workers`` requests at once, each
taking an exponential service time (mean ``--service-ms``); a request to a model without a ready
copy waits for its load (``--load-base-s`` + size / ``--load-mb-s``), and loads on one instance run
one at a time (``max_concurrent_loads=1``), queueing behind each other. Unloads take 50 ms.

Policies:
- ``msm``: the placement engine (placement/engine/engine.py) driven like the controller drives it:
  ``record_requests`` per request, ``request_for_cold_model`` on a miss, ``tick`` every 250 ms and
  after each miss; requests go to the ready copy whose instance frees a worker first. Its default
  eviction (LRFU, 60 s half-life) beside cost-aware LRFU (per byte, weighed by the load's measured
  time), plain LRU (``frequency_half_life_s=0``) and the ``--half-lives`` given;
  ``--shift-s`` reshuffles the popularity ranking now and then, to see which half-lives still adapt.
- ``lru-hash``: each model hashed to one instance; each instance an independent LRU cache.
- ``random``: a model's one copy goes to a random instance on a miss, evicting that instance's LRU.
- ``multiplex``: Ray Serve's ``@serve.multiplexed`` (the peer of bench/ray_multiplex.py): each
  instance an LRU of a number of models; Ray's router, which learns what each replica holds only
  from the replicas' reports (``run_multiplex``). Its choices are random: ``--ray-draws`` runs it
  several times.

The live comparison in seconds, request for request (its stream, its models' sizes, its loads'
cost of about 20 ms):

    .venv/bin/python bench/placement_zipf.py --models 40 --instances 2 --fit 0.8 --rate 25 \
        --duration 90 --warmup 0 --live-sizes --live-stream --seed 1 --load-base-s 0.02 \
        --load-mb-s 100000 --ray-draws 21 --half-lives
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import statistics
import sys
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from placement.engine.clock import FakeClock
from placement.engine.engine import Engine
from placement.engine.model_types import DesiredModel, EngineConfig, InstanceInfo, LoadAction

MB = 1024 * 1024


@dataclass
class Setup:
    models: int
    instances: int
    fit: float
    zipf_s: float
    rate: float
    duration_s: float
    warmup_s: float
    workers: int
    service_ms: float
    load_base_s: float
    load_mb_s: float
    seed: int
    mem_buffer: int = 0  # memBufferBytes: what copies being unloaded may still use (msm only)
    shift_s: float = 0.0  # > 0: the popularity ranking is shuffled anew this often
    live_sizes: bool = False  # sizes spread as the live benchmark's forests (10-49 trees), not lognormal
    live_stream: bool = False  # bench/ray_multiplex.py's very stream for this seed, not this module's
    ray_report_s: float = 0.1  # Ray's replicas push the models they hold this often (multiplex)
    ray_import_s: float = 1.0  # a Ray replica's first load also imports scikit-learn (multiplex)
    sizes: list[int] = field(default_factory=list)
    capacity: int = 0

    def build(self) -> None:
        rng = random.Random(self.seed)
        mbs = [min(400, max(20, rng.lognormvariate(math.log(80), 0.6))) for _ in range(self.models)]
        if self.live_sizes:  # bench/ray_multiplex.py's make_models: model i has 10 + 7i mod 40 trees
            mbs = [3.0 * (10 + (i * 7) % 40) for i in range(self.models)]
        self.sizes = [int(mb) * MB for mb in mbs]
        self.capacity = int(sum(self.sizes) * self.fit / self.instances)

    def load_time(self, size: int) -> float:
        return self.load_base_s + size / MB / self.load_mb_s

    def requests(self) -> list[tuple[float, int]]:
        """(arrival time, model index): Poisson arrivals, Zipf popularity over a shuffled ranking."""
        if self.live_stream:
            from ray_multiplex import zipf_stream  # the live benchmark's generator, request for request

            names = [f"m{i:02d}" for i in range(self.models)]
            stream, _, _ = zipf_stream(names, self.rate, self.duration_s, self.zipf_s, self.seed)
            return [(t, int(name[1:])) for t, name in stream]
        rng = random.Random(self.seed + 1)
        weights = [1 / (k + 1) ** self.zipf_s for k in range(self.models)]
        ranking = list(range(self.models))
        rng.shuffle(ranking)  # popularity independent of index (and of hash placement)
        cum = list(itertools.accumulate(weights))
        out, t, shifted = [], 0.0, 0.0
        while True:
            t += rng.expovariate(self.rate)
            if t >= self.duration_s:
                return out
            if self.shift_s > 0 and t - shifted >= self.shift_s:  # yesterday's favourites fade
                shifted = t
                rng.shuffle(ranking)
            k = min(self.models - 1, _bisect(cum, rng.random() * cum[-1]))
            out.append((t, ranking[k]))


def _bisect(cum: list[float], x: float) -> int:
    lo, hi = 0, len(cum)
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    hits: int = 0
    requests: int = 0
    loads: int = 0

    def served(self, arrival: float, done: float, hit: bool, setup: Setup) -> None:
        if arrival < setup.warmup_s:
            return
        self.requests += 1
        self.hits += hit
        self.latencies.append(done - arrival)

    def row(self, name: str, wall: float) -> str:
        lat = sorted(self.latencies)
        q = statistics.quantiles(lat, n=1000)
        return (f"| {name} | {self.hits / self.requests:.1%} | {self.loads} | {q[499] * 1000:.1f} | "
                f"{q[989] * 1000:.1f} | {q[998] * 1000:.0f} | {statistics.fmean(lat) * 1000:.1f} | "
                f"{wall:.1f} |")


class Workers:
    """Per-instance worker pools: when does a request that arrives at ``t`` finish?"""

    def __init__(self, n_instances: int, workers: int, service_ms: float, seed: int) -> None:
        self.free = [[0.0] * workers for _ in range(n_instances)]
        self.rng = random.Random(seed + 2)
        self.mean = service_ms / 1000

    def earliest(self, i: int) -> float:
        return self.free[i][0]

    def serve(self, i: int, t: float) -> float:
        start = max(t, heapq.heappop(self.free[i]))
        done = start + self.rng.expovariate(1 / self.mean)
        heapq.heappush(self.free[i], done)
        return done


def run_baseline(setup: Setup, policy: str) -> Stats:
    """lru-hash / random: one copy per model, per-instance LRU, FIFO load queue per instance."""
    st = Stats()
    rng = random.Random(setup.seed + 3)
    workers = Workers(setup.instances, setup.workers, setup.service_ms, setup.seed)
    caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(setup.instances)]
    used = [0] * setup.instances
    where: dict[int, int] = {}  # model -> instance holding (or loading) it
    ready_at: dict[int, float] = {}  # model -> time its load completes
    loader_free = [0.0] * setup.instances
    home = list(range(setup.models))
    random.Random(setup.seed + 4).shuffle(home)
    for t, m in setup.requests():
        i = where.get(m)
        if i is not None:
            caches[i].move_to_end(m)
            done = workers.serve(i, max(t, ready_at[m]))
            st.served(t, done, ready_at[m] <= t, setup)
            continue
        i = home[m] % setup.instances if policy == "lru-hash" else rng.randrange(setup.instances)
        size = setup.sizes[m]
        for victim in list(caches[i]):
            if used[i] + size <= setup.capacity:
                break
            if ready_at[victim] > t:
                continue  # never evict a model that is still loading
            del caches[i][victim]
            del where[victim]
            used[i] -= setup.sizes[victim]
        caches[i][m] = None
        used[i] += size
        where[m] = i
        start = max(t, loader_free[i])
        ready_at[m] = loader_free[i] = start + setup.load_time(size)
        st.loads += 1
        st.served(t, workers.serve(i, ready_at[m]), False, setup)
    return st


def run_multiplex(setup: Setup, draw: int = 0) -> Stats:
    """Ray Serve's model multiplexing, as bench/ray_multiplex.py runs it live: each replica an
    LRU of at most K models by count (K: ``--fit`` of the models per instance, the share the byte
    budget gives), loading on its own event loop one model at a time.

    Where a request goes is Ray 2.60's router (``ray/serve/_private/request_router``): to a
    replica the router believes holds its model, else to one of those it believes hold the fewest
    models; among the candidates, power of two choices by ongoing requests (ties at random). The router
    learns what a replica holds only from the replica's reports, which its event loop pushes every
    ``--ray-report-s`` and which a blocking load holds back (the first load on a replica also
    imports scikit-learn, ``--ray-import-s``). A hot model asked for again before its first load
    is reported therefore loads on both replicas, and as both copies keep getting requests neither
    ages out: the second copy holds a slot for good. With ``--ray-report-s 0 --ray-import-s 0``
    the router knows at once (the policy alone)."""
    st = Stats()
    rng = random.Random((setup.seed + 5) * 1000 + draw)  # draw: another run of Ray's random choices
    n = setup.instances
    k = max(1, round(setup.fit * setup.models / n))
    workers = Workers(n, setup.workers, setup.service_ms, setup.seed)
    # per instance: model -> when its load completes (what the replica holds or is loading)
    caches: list[OrderedDict[int, float]] = [OrderedDict() for _ in range(n)]
    known: list[set[int]] = [set() for _ in range(n)]  # what the router believes each one holds
    reports: list[tuple[float, int, int]] = []  # (when the router learns, seq, instance)
    seq = itertools.count()
    loader_free = [0.0] * n
    imported = [False] * n

    ongoing: list[list[float]] = [[] for _ in range(n)]  # per instance: when its requests finish

    def pick(cands: list[int], t: float) -> int:
        """Power of two choices by each replica's ongoing requests, as Ray's router counts them."""
        for q in ongoing:
            while q and q[0] <= t:
                heapq.heappop(q)
        two = rng.sample(cands, 2) if len(cands) > 1 else cands
        return min(two, key=lambda i: (len(ongoing[i]), rng.random()))

    def serve(i: int, t: float, start: float, hit: bool) -> None:
        done = workers.serve(i, start)
        heapq.heappush(ongoing[i], done)
        st.served(t, done, hit, setup)

    for t, m in setup.requests():
        while reports and reports[0][0] <= t:
            _, _, i = heapq.heappop(reports)
            known[i] = set(caches[i])
        cands = [i for i in range(n) if m in known[i]]
        if not cands:
            fewest = min(len(c) for c in known)
            cands = [i for i in range(n) if len(known[i]) == fewest]
        i = pick(cands, t)
        if m in caches[i]:
            caches[i].move_to_end(m)
            ready = caches[i][m]
            serve(i, t, max(t, ready), ready <= t)
            continue
        while len(caches[i]) >= k:
            caches[i].popitem(last=False)
        start = max(t, loader_free[i])
        took = setup.load_time(setup.sizes[m]) + (0.0 if imported[i] else setup.ray_import_s)
        imported[i] = True
        caches[i][m] = loader_free[i] = start + took
        heapq.heappush(reports, (loader_free[i] + rng.uniform(0, setup.ray_report_s), next(seq), i))
        st.loads += 1
        serve(i, t, caches[i][m], False)
    return st


def run_multiplex_draws(setup: Setup, draws: int) -> tuple[str, Stats]:
    """Ray's router run ``draws`` times, its random choices drawn anew: the run with the median
    loads, named with their range."""
    if draws <= 1:
        return "multiplex (Ray Serve's, by count)", run_multiplex(setup)
    stats = sorted((run_multiplex(setup, d) for d in range(draws)), key=lambda st: st.loads)
    return (f"multiplex (Ray Serve's, by count; median of {draws} draws, loads "
            f"{stats[0].loads}-{stats[-1].loads})", stats[len(stats) // 2])


def run_msm(setup: Setup, config: EngineConfig) -> Stats:
    st = Stats()
    clock = FakeClock(0.0)
    engine = Engine(clock, config, random.Random(setup.seed))
    workers = Workers(setup.instances, setup.workers, setup.service_ms, setup.seed)
    for i in range(setup.instances):
        engine.instance_up(InstanceInfo(f"i{i}", "rt", "127.0.0.1", 9000 + i, 9100 + i, setup.capacity,
                                        unload_headroom_bytes=setup.mem_buffer))
    specs = [DesiredModel(f"m{m}", f"m{m}__isvc-0", "rt", "sklearn", f"/m/{m}", setup.sizes[m])
             for m in range(setup.models)]
    engine.set_desired(specs)
    index = {f"i{i}": i for i in range(setup.instances)}
    events: list[tuple[float, int, str, tuple]] = []
    seq = itertools.count()
    waiting: dict[str, list[float]] = defaultdict(list)

    def apply(actions: list) -> None:
        now = clock.now()
        for a in actions:
            if isinstance(a, LoadAction):
                st.loads += 1
                done = now + setup.load_time(a.model.size_estimate_bytes)
                heapq.heappush(events, (done, next(seq), "loaded", (a.instance, a.revision, a.model)))
            else:
                heapq.heappush(events, (now + 0.05, next(seq), "unloaded", (a.instance, a.revision)))

    def serve(name: str, t: float, hit: bool) -> bool:
        copies = engine.routable_copies(name)
        if not copies:
            return False
        i = min((index[c[1]] for c in copies), key=workers.earliest)
        now = clock.now()
        st.served(t, workers.serve(i, now), hit, setup)
        engine.record_requests(name, 1, f"i{i}")
        return True

    for t, m in setup.requests():
        heapq.heappush(events, (t, next(seq), "request", (m,)))
    tick = 0.0
    while events:
        t, n, kind, data = heapq.heappop(events)
        if tick <= t:  # a periodic tick comes first (what it decides may happen before t)
            heapq.heappush(events, (t, n, kind, data))
            clock.set(max(clock.now(), tick))
            apply(engine.tick())
            tick += 0.25
            continue
        clock.set(t)
        if kind == "request":
            name = f"m{data[0]}"
            if not serve(name, t, True):
                waiting[name].append(t)
                engine.request_for_cold_model(name)
                apply(engine.tick())
        elif kind == "loaded":
            inst, rev, spec = data
            engine.load_succeeded(inst, rev, spec.size_estimate_bytes)
            if waiting.get(spec.name) and engine.routable_copies(spec.name):
                for arrival in waiting.pop(spec.name):
                    serve(spec.name, arrival, False)
            apply(engine.tick())
        else:
            engine.unload_done(*data)
    return st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=500)
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--fit", type=float, default=0.3, help="fraction of all model bytes that fits")
    ap.add_argument("--zipf-s", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=1200.0, help="simulated seconds")
    ap.add_argument("--warmup", type=float, default=300.0, help="simulated seconds not measured")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--service-ms", type=float, default=5.0)
    ap.add_argument("--load-base-s", type=float, default=0.5)
    ap.add_argument("--load-mb-s", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mem-buffer-mb", type=float, default=0.0,
                    help="msm's memBufferBytes per instance (the article's runtime: 128)")
    ap.add_argument("--shift-s", type=float, default=0.0,
                    help="shuffle the models' popularity anew this often (0: a fixed ranking)")
    ap.add_argument("--live-sizes", action="store_true",
                    help="models sized as bench/ray_multiplex.py's forests (by tree count, 30-147 MB), "
                         "not lognormal 20-400 MB")
    ap.add_argument("--live-stream", action="store_true",
                    help="replay bench/ray_multiplex.py's stream for --seed (its --models, --rate, "
                         "--duration, --zipf), request for request")
    ap.add_argument("--ray-report-s", type=float, default=0.1,
                    help="multiplex: how often a Ray replica reports its models to the router "
                         "(Ray's PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S)")
    ap.add_argument("--ray-import-s", type=float, default=1.0,
                    help="multiplex: what a replica's first load adds (importing scikit-learn, "
                         "measured live at about 1 s)")
    ap.add_argument("--ray-draws", type=int, default=1,
                    help="multiplex: run Ray's router this many times (its random choices drawn anew) "
                         "and show the run with the median loads, with their range")
    ap.add_argument("--half-lives", type=float, nargs="*", default=[30.0, 300.0],
                    help="also run msm's engine with LRFU eviction at these request half-lives (s)")
    a = ap.parse_args()
    setup = Setup(a.models, a.instances, a.fit, a.zipf_s, a.rate, a.duration, a.warmup, a.workers,
                  a.service_ms, a.load_base_s, a.load_mb_s, a.seed, int(a.mem_buffer_mb * MB), a.shift_s,
                  a.live_sizes, a.live_stream, a.ray_report_s, a.ray_import_s)
    setup.build()
    print(f"{a.models} models ({sum(setup.sizes) / MB / 1024:.1f} GiB), {a.instances} instances x "
          f"{setup.capacity / MB:.0f} MiB ({a.fit:.0%} fits), Zipf s={a.zipf_s}, {a.rate:g} req/s, "
          f"{a.duration:g} s simulated ({a.warmup:g} s warm-up), seed {a.seed}"
          + (f", popularity reshuffled every {a.shift_s:g} s" if a.shift_s else "") + "\n")
    print("| policy | hit rate | loads | p50 ms | p99 ms | p99.9 ms | mean ms | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    runs = [
        ("msm (LRFU eviction, half-life 60 s: the default)", lambda: run_msm(setup, EngineConfig())),
        ("msm, LRFU eviction, cost-aware (cost_aware_eviction on)",
         lambda: run_msm(setup, EngineConfig(cost_aware_eviction=True))),
        ("msm, LRU eviction (ModelMesh's)", lambda: run_msm(setup, EngineConfig(frequency_half_life_s=0))),
        ("msm (no idle scale-down)", lambda: run_msm(setup, EngineConfig(idle_scale_down=False))),
        *((f"msm, LRFU eviction (half-life {h:g} s)",
           lambda h=h: run_msm(setup, EngineConfig(frequency_half_life_s=h))) for h in a.half_lives),
        ("lru-hash", lambda: run_baseline(setup, "lru-hash")),
        ("random", lambda: run_baseline(setup, "random")),
    ]
    for name, fn in runs:
        started = time.perf_counter()
        st = fn()
        print(st.row(name, time.perf_counter() - started), flush=True)
    started = time.perf_counter()
    name, st = run_multiplex_draws(setup, a.ray_draws)
    print(st.row(name, time.perf_counter() - started), flush=True)


if __name__ == "__main__":
    main()
