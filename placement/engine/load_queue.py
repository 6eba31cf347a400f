"""Per-instance load queue: bounded concurrency, urgent loads (requests waiting) first."""

from __future__ import annotations

from placement.engine.instance_cache import CachedCopy, InstanceCache, Phase


def queue_order(c: CachedCopy) -> tuple[bool, int]:
    return (not c.urgent, c.seq)


def next_loads(cache: InstanceCache, overlap_unload_and_load: bool) -> list[CachedCopy]:
    """Queued copies that may start loading now, in order (their phase is not changed here).

    A load starts only while fewer than ``max_concurrent_loads`` run on the instance, so loading
    never starves the traffic the instance serves. Unless ``overlap_unload_and_load``, it also
    waits until the copies evicted to make room for it are really unloaded: the runtime's memory
    limit is then never exceeded, at the cost of the gateway-ACK + unload time.
    """
    running = cache.count(Phase.LOADING)
    slots = cache.info.max_concurrent_loads - running
    if slots <= 0:
        return []
    queued = sorted((c for c in cache.copies.values() if c.phase is Phase.QUEUED), key=queue_order)
    out: list[CachedCopy] = []
    if overlap_unload_and_load:
        return queued[:slots]
    # Bytes in memory (or about to be) once the chosen loads run: ready, loading, unloading.
    in_memory = sum(c.size_bytes for c in cache.copies.values() if c.phase is not Phase.QUEUED)
    for c in queued:
        if len(out) >= slots:
            break
        if in_memory + c.size_bytes > cache.info.capacity_bytes and (in_memory > 0 or out):
            break  # keep the order: a later small load must not overtake a waiting urgent one
        out.append(c)
        in_memory += c.size_bytes
    return out
