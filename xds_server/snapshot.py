"""Snapshots: an immutable, versioned view of every resource the gateway is to have.

Each resource is serialised once, when the snapshot is built, into the exact bytes it occupies in
a state-of-the-world ``DiscoveryResponse`` and in a ``DeltaDiscoveryResponse``. Protobuf messages
merge when concatenated on the wire (repeated fields append), so a response for any client is the
concatenation of a small header and the prebuilt entries: no message is serialised per client.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server import resource_types as rt


@dataclass(frozen=True, eq=False)
class Resource:
    """One resource of a snapshot, with its content version and its prebuilt wire entries."""

    name: str
    type_url: str
    version: str
    message: Message
    sotw_entry: bytes  # DiscoveryResponse.resources[i], tag included
    delta_entry: bytes  # DeltaDiscoveryResponse.resources[i], tag included
    merged_from: frozenset[str] = frozenset()  # versions a make-before-break union stands for
    mix: int = 0  # 64-bit digest of (name, version): snapshot versions are XORs of these

    @property
    def covers(self) -> frozenset[str]:
        """Versions whose content this resource includes: its own, or those it is a union of."""
        return self.merged_from or frozenset((self.version,))

    @classmethod
    def of(cls, type_url: str, name: str, message: Message,
           merged_from: frozenset[str] = frozenset()) -> Resource:
        value = message.SerializeToString(deterministic=True)
        version = hashlib.blake2b(value, digest_size=8).hexdigest()
        packed = any_pb2.Any(type_url=type_url, value=value)
        sotw = discovery_pb2.DiscoveryResponse(resources=[packed]).SerializeToString()
        delta = discovery_pb2.DeltaDiscoveryResponse(
            resources=[discovery_pb2.Resource(name=name, version=version, resource=packed)]
        ).SerializeToString()
        mix = int.from_bytes(hashlib.blake2b(f"{name}\0{version}".encode(), digest_size=8).digest(), "big")
        return cls(name, type_url, version, message, sotw, delta, merged_from, mix)


def _version(digests: Mapping[str, int]) -> str:
    h = hashlib.blake2b(digest_size=6)
    for type_url in sorted(digests):
        if digests[type_url]:
            h.update(f"{type_url}={digests[type_url]:016x};".encode())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Snapshot:
    """All resources by type URL then name. Never mutated once built.

    A snapshot made from a previous one (``build(previous=...)`` or ``patch``) records which names
    changed per type, so a stream that was in sync with the previous one checks only those; a
    type that did not change is the very same mapping object as in the previous snapshot.
    """

    version: str
    resources: Mapping[str, Mapping[str, Resource]]
    digests: Mapping[str, int] = field(default_factory=dict, repr=False)
    changed: Mapping[str, frozenset[str]] = field(default_factory=dict, repr=False)
    _base: weakref.ref[Snapshot] | None = field(default=None, repr=False)
    _bodies: dict[str, bytes] = field(default_factory=dict, repr=False)
    _unions: dict[tuple[str, str], Resource] = field(default_factory=dict, repr=False)

    @property
    def base(self) -> Snapshot | None:
        """The snapshot this one was made from, while something still holds it."""
        return self._base() if self._base is not None else None

    @classmethod
    def build(cls, resources: Mapping[str, Mapping[str, Message]], version: str | None = None,
              previous: Snapshot | None = None) -> Snapshot:
        """Serialise ``resources``; the version defaults to a digest of their content.

        With ``previous``, resources whose message is the very same object as in the previous
        snapshot are reused without being serialised again.
        """
        built: dict[str, Mapping[str, Resource]] = {}
        digests: dict[str, int] = {}
        changed: dict[str, frozenset[str]] = {}
        for type_url in sorted(resources, key=rt.order_key):
            old = previous.get(type_url) if previous is not None else {}
            typed: dict[str, Resource] = {}
            mix = 0
            diff = []
            for name in sorted(resources[type_url]):
                msg = resources[type_url][name]
                prior = old.get(name)
                if prior is not None and prior.message is msg:
                    res = prior
                else:
                    res = Resource.of(type_url, name, msg)
                    if prior is not None and res.version == prior.version:
                        res = prior
                if res is not prior:
                    diff.append(name)
                typed[name] = res
                mix ^= res.mix
            diff.extend(n for n in old if n not in typed)
            if previous is not None and not diff and type_url in previous.resources:
                built[type_url] = old  # the same object: streams skip the type entirely
            else:
                built[type_url] = typed
            digests[type_url] = mix
            changed[type_url] = frozenset(diff)
        if previous is not None:
            for type_url in previous.resources:
                if type_url not in built:
                    changed[type_url] = frozenset(previous.get(type_url))
        return cls(version or _version(digests), built, digests, changed,
                   weakref.ref(previous) if previous is not None else None)

    @classmethod
    def patch(cls, previous: Snapshot, changes: Mapping[str, Mapping[str, Message | None]],
              version: str | None = None) -> Snapshot:
        """``previous`` with some resources replaced (a message) or removed (None).

        Costs what changed, not what the snapshot holds: untouched types are shared, touched ones
        are copied (a C-level dict copy) and only the given resources serialised.
        """
        built: dict[str, Mapping[str, Resource]] = dict(previous.resources)
        digests = dict(previous.digests)
        changed: dict[str, frozenset[str]] = {}
        for type_url, items in changes.items():
            old = previous.get(type_url)
            typed: dict[str, Resource] | None = None
            mix = digests.get(type_url, 0)
            diff = []
            for name, msg in items.items():
                prior = old.get(name)
                if msg is None:
                    if prior is None:
                        continue
                    res = None
                else:
                    if prior is not None and prior.message is msg:
                        continue
                    res = Resource.of(type_url, name, msg)
                    if prior is not None and prior.version == res.version:
                        continue
                if typed is None:
                    typed = dict(old)
                if prior is not None:
                    mix ^= prior.mix
                    del typed[name]
                if res is not None:
                    mix ^= res.mix
                    typed[name] = res
                diff.append(name)
            if typed is not None:
                built[type_url] = typed
                digests[type_url] = mix
                changed[type_url] = frozenset(diff)
        return cls(version or _version(digests), built, digests, changed, weakref.ref(previous))

    def changes_since(self, older: Snapshot, type_url: str, max_steps: int = 16) -> frozenset[str] | None:
        """Names of ``type_url`` that may differ between ``older`` and this snapshot.

        None when ``older`` is not an ancestor within ``max_steps`` (the caller compares in full).
        """
        names: set[str] = set()
        snap: Snapshot | None = self
        for _ in range(max_steps):
            if snap is older:
                return frozenset(names)
            if snap is None or snap.base is None:
                return None
            names.update(snap.changed.get(type_url, ()))
            snap = snap.base
        return frozenset(names) if snap is older else None

    def get(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, {})

    def names(self, type_url: str) -> frozenset[str]:
        return frozenset(self.get(type_url))

    def messages(self, type_url: str) -> dict[str, Message]:
        return {name: r.message for name, r in self.get(type_url).items()}

    @property
    def type_urls(self) -> list[str]:
        return [t for t in self.resources if self.resources[t]]

    def sotw_body(self, type_url: str) -> bytes:
        """The concatenated entries of every resource of a type: a wildcard SotW response body."""
        body = self._bodies.get(type_url)
        if body is None:
            body = b"".join(r.sotw_entry for r in self.get(type_url).values())
            self._bodies[type_url] = body
        return body

    @cached_property
    def cluster_endpoint_names(self) -> Mapping[str, str]:
        """Cluster name → the ClusterLoadAssignment name it asks EDS for (EDS clusters only)."""
        out: dict[str, str] = {}
        for name, res in self.get(rt.CLUSTER).items():
            c = res.message
            if isinstance(c, cluster_pb2.Cluster) and c.type == cluster_pb2.Cluster.EDS:
                out[name] = c.eds_cluster_config.service_name or name
        return out

    def endpoints_union(self, name: str, held: Resource) -> Resource:
        """This snapshot's assignment ``name`` plus the hosts of ``held`` it no longer lists.

        While a client still routes by an older snapshot, hosts that older routes select must stay
        in their cluster; the union is built once per snapshot and shared by every stream.
        """
        new = self.get(rt.ENDPOINT)[name]
        if new.version in held.covers:
            # held is new, or a union already made with it: held has all of new and what it kept
            return new if len(held.covers) == 1 else held
        key = (name, held.version)
        union = self._unions.get(key)
        if union is None:
            msg = merge_assignments(held.message, new.message)
            union = Resource.of(rt.ENDPOINT, name, msg, held.covers | new.covers)
            self._unions[key] = union
        return union

    def size_bytes(self) -> int:
        return sum(len(r.sotw_entry) + len(r.delta_entry)
                   for typed in self.resources.values() for r in typed.values())

    def counts(self) -> dict[str, int]:
        return {t: len(v) for t, v in self.resources.items()}


def changed_names(old: Snapshot | None, new: Snapshot, type_url: str) -> Iterable[str]:
    """Names of ``type_url`` added, removed or changed between two snapshots."""
    before = old.get(type_url) if old is not None else {}
    after = new.get(type_url)
    for name, res in after.items():
        prior = before.get(name)
        if prior is None or prior.version != res.version:
            yield name
    for name in before:
        if name not in after:
            yield name


def _address_key(ep: endpoint_components_pb2.LbEndpoint) -> tuple[str, int, str]:
    a = ep.endpoint.address
    return a.socket_address.address, a.socket_address.port_value, a.pipe.path


def _union_metadata(dst: endpoint_components_pb2.LbEndpoint, src: endpoint_components_pb2.LbEndpoint) -> None:
    for namespace, struct in src.metadata.filter_metadata.items():
        into = dst.metadata.filter_metadata[namespace]
        for key, value in struct.fields.items():
            if key not in into.fields:
                into.fields[key].CopyFrom(value)
            elif value.HasField("list_value") and into.fields[key].HasField("list_value"):
                values = into.fields[key].list_value.values
                present = {v.SerializeToString(deterministic=True) for v in values}
                for v in value.list_value.values:
                    if v.SerializeToString(deterministic=True) not in present:
                        values.add().CopyFrom(v)


def merge_assignments(old: Message, new: Message) -> endpoint_pb2.ClusterLoadAssignment:
    """``new`` plus the hosts of ``old`` it dropped; a host in both also keeps old metadata values.

    Subset load balancing selects hosts by metadata lists (the revisions a copy holds), so a host
    that still serves an old revision keeps that revision listed until routes have moved on.
    """
    assert isinstance(old, endpoint_pb2.ClusterLoadAssignment)
    assert isinstance(new, endpoint_pb2.ClusterLoadAssignment)
    out = endpoint_pb2.ClusterLoadAssignment()
    out.CopyFrom(new)
    present = {_address_key(ep): ep for loc in out.endpoints for ep in loc.lb_endpoints}
    for loc in old.endpoints:
        gone = []
        for ep in loc.lb_endpoints:
            current = present.get(_address_key(ep))
            if current is None:
                gone.append(ep)
            else:
                _union_metadata(current, ep)
        if gone:
            kept = out.endpoints.add()
            kept.CopyFrom(loc)
            del kept.lb_endpoints[:]
            kept.lb_endpoints.extend(gone)
    return out
