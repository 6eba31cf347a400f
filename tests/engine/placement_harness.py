"""A harness that plays the controller for the placement engine: a fake clock, seeded RNG,
and helpers that complete the engine's load/unload actions the way runtimes would."""

from __future__ import annotations

import random
from collections.abc import Callable

from placement.engine.clock import FakeClock
from placement.engine.engine import Engine
from placement.engine.model_types import DesiredModel, EngineConfig, InstanceInfo, LoadAction, UnloadAction

MB = 1024 * 1024


def model(name: str, rev: str = "a", size_mb: int = 100, runtime: str = "rt", **kw) -> DesiredModel:
    return DesiredModel(name=name, revision=f"{name}__isvc-{rev}", runtime=runtime, model_type="sklearn",
                        model_path=f"/models/{name}/{rev}", size_estimate_bytes=size_mb * MB, **kw)


class Harness:
    def __init__(self, config: EngineConfig | None = None, seed: int = 0) -> None:
        self.clock = FakeClock()
        self.engine = Engine(self.clock, config or EngineConfig(), random.Random(seed))
        self.loading: dict[tuple[str, str], LoadAction] = {}
        self.unloading: set[tuple[str, str]] = set()
        self.log: list[LoadAction | UnloadAction] = []

    def up(self, iid: str, capacity_mb: int = 1000, runtime: str = "rt", loaded: dict[str, int] | None = None,
           concurrency: int = 1) -> InstanceInfo:
        port = 9000 + len(self.engine.instances)
        info = InstanceInfo(iid, runtime, "127.0.0.1", port, port + 1000, capacity_mb * MB, concurrency)
        self.engine.instance_up(info, loaded or {})
        return info

    def tick(self) -> list[LoadAction | UnloadAction]:
        actions = self.engine.tick()
        for a in actions:
            self.log.append(a)
            if isinstance(a, LoadAction):
                self.loading[(a.instance, a.revision)] = a
            else:
                self.unloading.add((a.instance, a.revision))
        return actions

    def loads(self, actions: list) -> list[tuple[str, str]]:
        return [(a.instance, a.revision) for a in actions if isinstance(a, LoadAction)]

    def unloads(self, actions: list) -> list[tuple[str, str]]:
        return [(a.instance, a.revision) for a in actions if isinstance(a, UnloadAction)]

    def succeed(self, iid: str, rev: str, size: int | None = None) -> None:
        a = self.loading.pop((iid, rev))
        self.engine.load_succeeded(iid, rev, a.model.size_estimate_bytes if size is None else size)

    def fail(self, iid: str, rev: str, error: str = "boom") -> None:
        self.loading.pop((iid, rev))
        self.engine.load_failed(iid, rev, error)

    def finish_unloads(self) -> None:
        for iid, rev in sorted(self.unloading):
            self.engine.unload_done(iid, rev)
        self.unloading.clear()

    def settle(self, rounds: int = 20, sizes: Callable[[LoadAction], int] | None = None) -> None:
        """Tick and complete every load and unload until the engine has nothing more to do."""
        for _ in range(rounds):
            actions = self.tick()
            if not actions and not self.loading and not self.unloading:
                return
            for key, a in sorted(self.loading.items()):
                self.loading.pop(key)
                size = sizes(a) if sizes else a.model.size_estimate_bytes
                self.engine.load_succeeded(a.instance, a.revision, size)
            self.finish_unloads()
        raise AssertionError("engine did not settle")

    def ready(self, name: str) -> dict[str, list[str]]:
        """revision -> instances with a ready copy, as the gateway sees it."""
        m = self.engine.mesh_view().models.get(name)
        return {} if m is None else {r.id: [c.instance for c in r.copies] for r in m.revisions}

    def routed(self, name: str) -> list[tuple[str, int]]:
        m = self.engine.mesh_view().models[name]
        return [(d.revision, d.weight) for d in m.effective_rules()[0].destinations]
