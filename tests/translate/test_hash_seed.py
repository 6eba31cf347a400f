"""Snapshot versions and bytes do not depend on the process: same mesh view, same snapshot.

A resource's version is a digest of its bytes, and Envoy reconnecting to a restarted control plane
(or to another replica) is sent only what differs from what it holds. So anything whose order
changes from one process to the next and reaches the wire would resend everything after a restart
(a listener resent is a listener drained) and break make-before-break across restarts. Two such
orders: Python's set and str hashing (``PYTHONHASHSEED``), and protobuf's map fields (a
``Struct``'s keys...), serialised in an order that changes per process unless the serialisation is
deterministic; inside an ``Any`` that is the packing's, not the snapshot's.

Translation runs here in several processes with different ``PYTHONHASHSEED`` values, both by a
full build and as the publisher builds (incremental patches). The map order is random per process
(it does not follow the seed): each process also checks that every ``Any`` it built holds the
deterministic serialisation of its message, so one process whose order happens to differ from the
sorted one suffices to catch a non-deterministic packing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    HeaderMatch,
    MeshView,
    Model,
    Revision,
    RouteRule,
)
from xds_server.snapshot import Snapshot
from xds_server.translate import GatewayOptions, UpstreamTls, translate
from xds_server.translate.incremental import IncrementalTranslator

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

SEEDS = ("1", "2", "3", "4", "5", "6")
COPIES = [Copy(f"rt-{i}", f"10.0.0.{i + 1}", 8080, 8081) for i in range(5)]
OPTIONS = {
    "subset-scoped": GatewayOptions(subset_shards=4),
    "subset-flat-1-shard": GatewayOptions(subset_shards=1, route_layout="flat"),
    "per-revision-scoped": GatewayOptions(cluster_layout="per_revision"),
    "per-revision-flat-tls": GatewayOptions(cluster_layout="per_revision", route_layout="flat",
                                            upstream_tls=UpstreamTls(sni="runtime.local")),
}


def views() -> list[MeshView]:
    """A mesh with several models, runtimes, revisions, shared copies, header rules and canary
    weights, then the kinds of change the publisher patches in."""
    c0, c1, c2, c3, c4 = COPIES
    models = [
        Model("mnist", (Revision("mnist__isvc-1", "mlserver", (c0, c1, c2)),
                        Revision("mnist__isvc-2", "mlserver", (c1, c3)),
                        Revision("mnist__isvc-3", "mlserver", (c2,))),
              rules=(RouteRule((Destination("mnist__isvc-3"),),
                               headers=(HeaderMatch("x-canary", exact="1"),
                                        HeaderMatch("x-team", prefix="ml"))),
                     RouteRule((Destination("mnist__isvc-2"),),
                               headers=(HeaderMatch("x-user", regex="^b.*"),), timeout_s=5.0, retries=1),
                     RouteRule((Destination("mnist__isvc-1", 80), Destination("mnist__isvc-2", 15),
                                Destination("mnist__isvc-3", 5)), retry_on="5xx"))),
        Model("digits", (Revision("digits__isvc-a", "mlserver", (c3, c0)),
                         Revision("digits__isvc-b", "triton", (c4,))),
              rules=(RouteRule((Destination("digits__isvc-a", 50), Destination("digits__isvc-b", 50))),)),
        Model("peft", (Revision("peft__isvc-1", "triton", (c4, c3, c2, c1)),)),
        Model("cold", (Revision("cold__isvc-1", "mlserver"),)),
        *[Model(f"m{i}", (Revision(f"m{i}__isvc-1", "mlserver" if i % 2 else "triton",
                                   tuple(COPIES[j % 5] for j in range(i, i + 3))),)) for i in range(12)],
    ]
    first = MeshView.of(models, ActivatorEndpoint("10.0.1.1", 7000, 7001))
    mnist = first.models["mnist"]
    moved = replace(mnist, revisions=(replace(mnist.revisions[0], copies=(c4, c0)), *mnist.revisions[1:]))
    second = MeshView.of([moved, *[m for n, m in first.models.items() if n != "mnist"]], first.activator)
    third = MeshView.of([m for n, m in second.models.items() if n not in ("digits", "m3")])
    return [first, second, third]


def _digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _describe(snap: Snapshot) -> dict[str, Any]:
    return {
        "version": snap.version,
        "resources": {t: {n: [r.version, _digest(r.sotw_entry), _digest(r.delta_entry)]
                          for n, r in sorted(snap.get(t).items())}
                      for t in sorted(snap.resources)},
    }


def non_canonical_anys(msg: Message, path: str) -> list[str]:
    """Paths of the ``Any`` values under ``msg`` that are not their message's deterministic bytes."""
    out: list[str] = []
    if isinstance(msg, any_pb2.Any):
        desc = descriptor_pool.Default().FindMessageTypeByName(msg.type_url.rsplit("/", 1)[-1])
        inner = message_factory.GetMessageClass(desc).FromString(msg.value)
        if inner.SerializeToString(deterministic=True) != msg.value:
            out.append(path)
        return out + non_canonical_anys(inner, f"{path}<{desc.name}>")
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    out += non_canonical_anys(item, f"{path}.{field.name}[{key}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                out += non_canonical_anys(item, f"{path}.{field.name}[{i}]")
        else:
            out += non_canonical_anys(value, f"{path}.{field.name}")
    return out


def fingerprint() -> dict[str, Any]:
    """Every snapshot of ``views()`` in every layout, built in full and as the publisher builds it
    (incremental patches with the scoped route layout)."""
    out: dict[str, Any] = {"hash_probe": hash("msm-hash-probe"), "layouts": {}, "non_canonical": []}
    for label, opts in OPTIONS.items():
        full = []
        for v in views():
            snap = Snapshot.build(translate(v, opts))
            full.append(_describe(snap))
            out["non_canonical"] += [p for t in sorted(snap.resources) for n, r in sorted(snap.get(t).items())
                                     for p in non_canonical_anys(r.message, f"{label} {n}")]
        inc = IncrementalTranslator(opts)
        snap: Snapshot | None = None
        patched = []
        for v in views():  # as the publisher does
            if snap is None or not inc.incremental:
                snap = Snapshot.build(inc.translate(v), previous=snap)
            else:
                snap = Snapshot.patch(snap, inc.changes(v))
            patched.append(_describe(snap))
        out["layouts"][label] = {"full": full, "patched": patched}
    return out


def _fingerprints_in_processes(seeds: tuple[str, ...]) -> list[dict[str, Any]]:
    """``fingerprint()`` in one fresh interpreter per seed, run side by side."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from test_hash_seed import fingerprint; print(json.dumps(fingerprint()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(HERE)], cwd=ROOT,
                              env={**os.environ, "PYTHONHASHSEED": seed},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in seeds]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=100)
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def test_snapshots_are_the_same_whatever_the_process_and_hash_seed():
    runs = _fingerprints_in_processes(SEEDS)
    assert len({r["hash_probe"] for r in runs}) == len(SEEDS)  # the seeds did change string hashing
    for seed, run in zip(SEEDS, runs, strict=True):
        assert not run["non_canonical"], f"PYTHONHASHSEED={seed}: not deterministically packed"
    one = runs[0]
    for two in runs[1:]:
        _assert_same(one, two)


def _assert_same(one: dict[str, Any], two: dict[str, Any]) -> None:
    assert one["layouts"].keys() == two["layouts"].keys() == OPTIONS.keys()
    for label in OPTIONS:
        a, b = one["layouts"][label], two["layouts"][label]
        for way in ("full", "patched"):
            for step, (x, y) in enumerate(zip(a[way], b[way], strict=True)):
                where = f"{label}, {way}, view {step}"
                assert x["resources"].keys() == y["resources"].keys(), where
                for t in x["resources"]:
                    differ = sorted(n for n in x["resources"][t].keys() | y["resources"][t].keys()
                                    if x["resources"][t].get(n) != y["resources"][t].get(n))
                    assert not differ, f"{where}: {t} differs between processes: {differ}"
                assert x["version"] == y["version"], where
        # a patched snapshot is the full build of the same view
        assert [s["version"] for s in a["patched"]] == [s["version"] for s in a["full"]], label
