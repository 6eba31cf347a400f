"""Event-loop stall while the publisher builds a full snapshot, and what the GC has to do with it.

Not a test. ``MODE``: ``one`` (one publisher, as a control plane runs), ``two`` (a second full
snapshot already alive in the heap), ``two-frozen`` (the same, frozen with ``gc.freeze()`` first).

    .venv/bin/python bench/gc_stall.py one      # and: two, two-frozen
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry
from xds_scale import Ticker, build_view, instances

from xds_server.cache import SnapshotCache
from xds_server.publisher import SnapshotPublisher
from xds_server.translate import GatewayOptions


def publisher() -> SnapshotPublisher:
    return SnapshotPublisher(SnapshotCache(), GatewayOptions(rest_port=1, grpc_port=2), CollectorRegistry())


async def main(mode: str, models: int) -> None:
    insts = instances(100)
    view = build_view(models, insts, insts[0], 10)
    keep = None
    if mode in ("two", "two-frozen"):
        keep = publisher()
        await keep.publish(view)
    if mode == "two-frozen":
        gc.freeze()
    pub = publisher()
    with Ticker() as tick:
        started = time.perf_counter()
        await pub.publish(view)
        elapsed = time.perf_counter() - started
    gen2 = gc.get_stats()[2]["collections"]
    print(f"{mode}: {models} models, full publish {elapsed:.1f} s, "
          f"worst loop stall {tick.worst * 1000:.0f} ms, gen-2 collections {gen2}")
    del keep


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["one", "two", "two-frozen"])
    ap.add_argument("--models", type=int, default=50000)
    a = ap.parse_args()
    asyncio.run(main(a.mode, a.models))
