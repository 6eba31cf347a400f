"""Per-instance load queue: bounded concurrency, urgent loads (requests waiting) first."""

from __future__ import annotations

from placement.engine.instance_cache import CachedCopy, InstanceCache, Phase


def queue_order(c: CachedCopy) -> tuple[bool, int]:
    return (not c.urgent, c.seq)


def next_loads(cache: InstanceCache, overlap_unload_and_load: bool) -> list[CachedCopy]:
    """Queued copies that may start loading now, in order (their phase is not changed here).

    A load starts only while fewer than ``max_concurrent_loads`` run on the instance, so loading
    never starves the traffic the instance serves. Unless ``overlap_unload_and_load``, it also
    waits until the copies evicted to make room for it are unloaded, or until those still
    draining fit in the instance's ``unload_headroom_bytes`` beside it: the runtime's memory limit
    is then never exceeded. Waiting costs the gateway's ACK, the drain grace and the unload.
    """
    running = cache.count(Phase.LOADING)
    slots = cache.info.max_concurrent_loads - running
    if slots <= 0:
        return []
    queued = sorted((c for c in cache.copies.values() if c.phase is Phase.QUEUED), key=queue_order)
    out: list[CachedCopy] = []
    if overlap_unload_and_load:
        return queued[:slots]
    # Bytes in memory (or about to be) once the chosen loads run: those that stay (ready,
    # loading) must fit the capacity; with the copies still being unloaded, capacity + headroom.
    staying = sum(c.size_bytes for c in cache.copies.values()
                  if c.phase is Phase.READY or c.phase is Phase.LOADING)
    draining = sum(c.size_bytes for c in cache.copies.values() if c.phase is Phase.UNLOADING)
    capacity, headroom = cache.info.capacity_bytes, cache.info.unload_headroom_bytes
    for c in queued:
        if len(out) >= slots:
            break
        fits = (staying + c.size_bytes <= capacity
                and staying + draining + c.size_bytes <= capacity + headroom)
        if not fits and (staying + draining > 0 or out):
            break  # keep the order: a later small load must not overtake a waiting urgent one
        out.append(c)
        staying += c.size_bytes
    return out
