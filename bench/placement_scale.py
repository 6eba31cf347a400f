"""How long the placement engine takes to place many copies, and its per-tick costs at rest.

Not a test. N models with ``minReplicas: 1`` over 100 instances (4 concurrent loads each); loads
complete at once; the engine runs until nothing is left to place. This is CPU time on the control
plane's event loop (the controller calls the engine there).

    .venv/bin/python bench/placement_scale.py --models 1000 5000 10000
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from placement.engine.clock import FakeClock
from placement.engine.engine import Engine
from placement.engine.model_types import DesiredModel, InstanceInfo, LoadAction

MB = 1024 * 1024


def run(n: int, instances: int) -> str:
    engine = Engine(FakeClock(), rng=random.Random(0))
    for i in range(instances):
        engine.instance_up(InstanceInfo(f"i{i}", "rt", "127.0.0.1", 9000 + i, 9500 + i, 10**6 * MB, 4))
    engine.set_desired([DesiredModel(f"m{m}", f"m{m}__isvc-0", "rt", "sklearn", f"/m/{m}", MB, min_copies=1)
                        for m in range(n)])
    started, ticks, worst = time.perf_counter(), 0, 0.0
    while True:
        t = time.perf_counter()
        actions = engine.tick()
        worst = max(worst, time.perf_counter() - t)
        ticks += 1
        loads = [a for a in actions if isinstance(a, LoadAction)]
        for a in loads:
            engine.load_succeeded(a.instance, a.revision, MB)
        if not actions:
            break
    placed = time.perf_counter() - started
    t = time.perf_counter()
    engine.tick()
    idle = time.perf_counter() - t
    t = time.perf_counter()
    engine.mesh_view()
    view = time.perf_counter() - t
    return (f"| {n} | {placed:.2f} | {ticks} | {worst * 1000:.0f} | {idle * 1000:.1f} | "
            f"{view * 1000:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--instances", type=int, default=100)
    a = ap.parse_args()
    print("| models | place all s | ticks | longest tick ms | idle tick ms | mesh_view ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in a.models:
        print(run(n, a.instances), flush=True)


if __name__ == "__main__":
    main()
