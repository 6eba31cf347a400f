"""Translation that redoes only what changed since the previous view.

A placement change touches one model or a few; translating 10,000 unchanged models again would
cost seconds. This keeps, per model, the messages it produced (its scoped routes, and its
clusters in the per-revision layout) and, per (runtime, shard) group of the subset layout, which
instance holds which revisions, and rebuilds only the models and groups whose inputs changed.
``changes(view)`` returns just those resources (None = removed), for ``Snapshot.patch``;
``translate(view)`` the whole set, equal to ``translate(view, opts)``. A layout without per-model
pieces (flat routes) falls back to full translation.
"""

from __future__ import annotations

from collections import Counter

from google.protobuf.message import Message

from xds_server import resource_types as rt
from xds_server.mesh_view import ActivatorEndpoint, MeasureEndpoint, MeshView, Model
from xds_server.translate import names as nm
from xds_server.translate import translate
from xds_server.translate.clusters import (
    activator_clusters,
    direct_clusters,
    group_clusters,
    measure_clusters,
    mirror_clusters,
    model_revision_clusters,
)
from xds_server.translate.listeners import build_listeners
from xds_server.translate.options import GatewayOptions
from xds_server.translate.routes import mirror_route_config, mirror_targets, model_scoped_routes

Resources = dict[str, dict[str, Message]]
Changes = dict[str, dict[str, Message | None]]
GroupKey = tuple[str, int]
# what one model puts into subset groups: (group, instance, (address, rest, grpc, mesh_tls), revision id)
Contribution = tuple[GroupKey, str, tuple[str, int, int], str]


class IncrementalTranslator:
    def __init__(self, opts: GatewayOptions | None = None) -> None:
        self.opts = opts or GatewayOptions()
        self._activator: ActivatorEndpoint | None = None
        self._measure: MeasureEndpoint | None = None
        self._models: dict[str, tuple[Model, Resources, list[Contribution], tuple[GroupKey, ...]]] = {}
        # group → instance → [address tuple, Counter of revision ids]
        self._groups: dict[GroupKey, dict[str, list]] = {}
        self._members: Counter[GroupKey] = Counter()  # models per group (a group without copies stays)
        self._group_names: dict[GroupKey, Resources] = {}
        types = (rt.LISTENER, rt.ROUTE, rt.SCOPED_ROUTE, rt.CLUSTER, rt.ENDPOINT)
        self._out: Resources = {t: {} for t in types}
        self._started = False
        self._mirror_sources: dict[str, frozenset[str]] = {}  # model -> the models its rules mirror to
        self._mirror_key: tuple | None = None  # what the mirror routes were built from
        self._direct_key: tuple | None = None  # what the direct clusters were built from
        self._direct_names: Resources = {}
        self.rebuilt = 0  # models and groups rebuilt by the last call

    @property
    def incremental(self) -> bool:
        return self.opts.route_layout == "scoped"

    def translate(self, view: MeshView) -> Resources:
        """Every resource for ``view``."""
        if not self.incremental:
            return translate(view, self.opts)
        self.changes(view)
        return {t: dict(v) for t, v in self._out.items()}

    def changes(self, view: MeshView) -> Changes:
        """Resources that differ from the previous call's (None for removed ones)."""
        if not self.incremental:
            raise ValueError("incremental translation needs the scoped route layout")
        opts = self.opts
        changes: Changes = {t: {} for t in self._out}

        def put(type_url: str, name: str, msg: Message | None) -> None:
            changes[type_url][name] = msg
            if msg is None:
                self._out[type_url].pop(name, None)
            else:
                self._out[type_url][name] = msg

        def swap(old: Resources, new: Resources) -> None:
            """Put ``new``'s resources, and remove those of ``old`` that ``new`` has not."""
            for type_url, msgs in old.items():
                for n in msgs:
                    if n not in new.get(type_url, {}):
                        put(type_url, n, None)
            for type_url, msgs in new.items():
                for n, msg in msgs.items():
                    put(type_url, n, msg)

        if not self._started:
            self._started = True
            for name, msg in build_listeners(opts).items():
                put(rt.LISTENER, name, msg)
            for name, msg in mirror_clusters(opts).items():
                put(rt.CLUSTER, name, msg)
        activator_changed = view.activator != self._activator
        if activator_changed:
            for name in (activator_clusters(self._activator, opts) if self._activator else {}):
                put(rt.CLUSTER, name, None)
            self._activator = view.activator
            for name, msg in (activator_clusters(view.activator, opts) if view.activator else {}).items():
                put(rt.CLUSTER, name, msg)
            stale = list(self._models)  # routes of models without copies name the activator
        else:
            stale = []
        if view.measure != self._measure:
            self._measure = view.measure
            built = measure_clusters(view, opts)
            put(rt.CLUSTER, nm.MEASURE_CLUSTER, built.get(nm.MEASURE_CLUSTER))
        for name in stale:
            self._models[name] = (_NEVER, *self._models[name][1:])

        per_revision = opts.cluster_layout == "per_revision"
        fallback = view.activator is not None  # copies' clusters fall back to the activator
        # with the activator come or gone, every group's fallback clusters come or go too
        dirty_groups: set[GroupKey] = set(self._groups) if activator_changed else set()
        rebuilt = 0
        models = view.models
        for name in [n for n in self._models if n not in models]:
            _, parts, contrib, member_of = self._models.pop(name)
            swap(parts, {})
            dirty_groups.update(self._remove(contrib))
            dirty_groups.update(self._join(member_of, -1))
            self._mirror_sources.pop(name, None)
            rebuilt += 1
        for name, model in models.items():
            cached = self._models.get(name)
            if cached is not None and (cached[0] is model or cached[0] == model):
                continue
            rebuilt += 1
            rcs, scopes = model_scoped_routes(model, view, opts)
            parts: Resources = {rt.ROUTE: dict(rcs), rt.SCOPED_ROUTE: dict(scopes)}
            if per_revision:
                clusters, clas = model_revision_clusters(model, opts, fallback)
                parts[rt.CLUSTER], parts[rt.ENDPOINT] = dict(clusters), dict(clas)
            contrib = [] if per_revision else _contributions(model, opts)
            member_of = () if per_revision else _groups_of(model, opts)
            swap(cached[1] if cached is not None else {}, parts)
            if cached is not None:
                dirty_groups.update(self._remove(cached[2]))
                dirty_groups.update(self._join(cached[3], -1))
            dirty_groups.update(self._add(contrib))
            dirty_groups.update(self._join(member_of, +1))
            self._models[name] = (model, parts, contrib, member_of)
            targets = mirror_targets(model)
            if targets:
                self._mirror_sources[name] = targets
            else:
                self._mirror_sources.pop(name, None)
        for key in sorted(dirty_groups):
            rebuilt += 1
            old_names = self._group_names.pop(key, {})
            hosts = self._groups.get(key, {})
            new_parts: Resources = {}
            if hosts or self._members[key] > 0:  # see clusters.subset_groups: groups outlive copies
                clusters, clas = group_clusters(key[0], key[1], {
                    inst: (*addr, sorted(revs)) for inst, (addr, revs) in hosts.items()}, opts, fallback)
                new_parts = {rt.CLUSTER: dict(clusters), rt.ENDPOINT: dict(clas)}
                self._group_names[key] = new_parts
            swap(old_names, new_parts)
        # the direct clusters follow the runtimes' instances (and whether direct replays are on)
        direct_key = (opts.direct_replays(view.activator), tuple(sorted(view.runtime_instances.items())))
        if direct_key != self._direct_key:
            self._direct_key = direct_key
            clusters, clas = direct_clusters(view, opts)
            direct_parts: Resources = {rt.CLUSTER: dict(clusters), rt.ENDPOINT: dict(clas)}
            swap(self._direct_names, direct_parts)
            self._direct_names = direct_parts
            rebuilt += 1
        # the mirror listener's routes follow the models mirrored to (only those are compared)
        targets = frozenset().union(*self._mirror_sources.values())
        key = (tuple((t, models.get(t)) for t in sorted(targets)), bool(targets) and view.activator is None)
        if key != self._mirror_key:
            self._mirror_key = key
            put(rt.ROUTE, nm.MIRROR_ROUTE, mirror_route_config(view, targets, opts))
            rebuilt += 1
        self.rebuilt = rebuilt
        return {t: c for t, c in changes.items() if c}

    def _remove(self, contrib: list[Contribution]) -> set[GroupKey]:
        touched = set()
        for key, inst, _addr, rev in contrib:
            hosts = self._groups[key]
            revs = hosts[inst][1]
            revs[rev] -= 1
            if revs[rev] <= 0:
                del revs[rev]
            if not revs:
                del hosts[inst]
            if not hosts:
                del self._groups[key]
            touched.add(key)
        return touched

    def _join(self, keys: tuple[GroupKey, ...], delta: int) -> set[GroupKey]:
        """A model enters (+1) or leaves (-1) groups; those that appear or vanish are returned."""
        touched = set()
        for key in keys:
            before = self._members[key]
            self._members[key] = before + delta
            if self._members[key] <= 0:
                del self._members[key]
            if (before > 0) != (self._members[key] > 0):
                touched.add(key)
        return touched

    def _add(self, contrib: list[Contribution]) -> set[GroupKey]:
        touched = set()
        for key, inst, addr, rev in contrib:
            entry = self._groups.setdefault(key, {}).setdefault(inst, [addr, Counter()])
            entry[0] = addr
            entry[1][rev] += 1
            touched.add(key)
        return touched


class _Never:
    """Equal to no model: forces a model's routes to be rebuilt."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


_NEVER = _Never()


def _groups_of(model: Model, opts: GatewayOptions) -> tuple[GroupKey, ...]:
    shard = nm.shard_of(model.name, opts.subset_shards)
    return tuple(sorted({(rev.runtime, shard) for rev in model.own_revisions()}))


def _contributions(model: Model, opts: GatewayOptions) -> list[Contribution]:
    shard = nm.shard_of(model.name, opts.subset_shards)
    return [((rev.runtime, shard), cp.instance, (cp.address, cp.rest_port, cp.grpc_port, cp.mesh_tls), rev.id)
            for rev in model.own_revisions() for cp in rev.copies]
