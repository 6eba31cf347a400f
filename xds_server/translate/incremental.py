"""Translation that redoes only what changed since the previous view.

A placement change touches one model or a few; translating 10,000 unchanged models again would
cost seconds. This keeps, per model, the messages it produced (its scoped routes, and its
clusters in the per-revision layout), and per (runtime, shard) group the clusters built from that
group's hosts, and returns the very same message objects when their inputs are equal, so
``Snapshot.build(previous=...)`` does not serialise them again either. The output equals
``translate(view, opts)``; a layout without per-model pieces (flat routes) falls back to it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from xds_server import resource_types as rt
from xds_server.mesh_view import Activator, MeshView, Model
from xds_server.translate import translate
from xds_server.translate.clusters import (
    activator_clusters,
    group_clusters,
    model_revision_clusters,
    subset_groups,
)
from xds_server.translate.listeners import build_listeners
from xds_server.translate.options import GatewayOptions
from xds_server.translate.routes import model_scoped_routes

Resources = dict[str, dict[str, Message]]


class IncrementalTranslator:
    def __init__(self, opts: GatewayOptions | None = None) -> None:
        self.opts = opts or GatewayOptions()
        self._listeners = build_listeners(self.opts)
        self._activator: Activator | None = None
        self._activator_clusters: dict[str, Message] = {}
        self._models: dict[str, tuple[Model, Resources]] = {}
        self._groups: dict[tuple[str, int], tuple[Any, Resources]] = {}
        self.reused = 0  # models (and groups) whose messages the last call reused

    def translate(self, view: MeshView) -> Resources:
        opts = self.opts
        if opts.route_layout != "scoped":
            return translate(view, opts)
        if view.activator != self._activator:
            self._activator = view.activator
            self._models.clear()  # routes fall back to the activator
            self._activator_clusters = (activator_clusters(view.activator, opts)
                                        if view.activator is not None else {})
        out: Resources = {rt.LISTENER: dict(self._listeners), rt.ROUTE: {}, rt.SCOPED_ROUTE: {},
                          rt.CLUSTER: {}, rt.ENDPOINT: {}}
        per_revision = opts.cluster_layout == "per_revision"
        models: dict[str, tuple[Model, Resources]] = {}
        reused = 0
        for name in sorted(view.models):
            model = view.models[name]
            cached = self._models.get(name)
            if cached is not None and (cached[0] is model or cached[0] == model):
                parts = cached[1]
                reused += 1
            else:
                rcs, scopes = model_scoped_routes(model, view, opts)
                parts = {rt.ROUTE: rcs, rt.SCOPED_ROUTE: scopes}
                if per_revision:
                    parts[rt.CLUSTER], parts[rt.ENDPOINT] = model_revision_clusters(model, opts)
            models[name] = (model, parts)
            for type_url, msgs in parts.items():
                out[type_url].update(msgs)
        self._models = models
        if not per_revision:
            groups: dict[tuple[str, int], tuple[Any, Resources]] = {}
            for key, hosts in sorted(subset_groups(view, opts).items()):
                fingerprint = tuple(sorted((i, a, r, g, tuple(sorted(revs)))
                                           for i, (a, r, g, revs) in hosts.items()))
                cached_group = self._groups.get(key)
                if cached_group is not None and cached_group[0] == fingerprint:
                    parts = cached_group[1]
                    reused += 1
                else:
                    clusters, clas = group_clusters(key[0], key[1], hosts, opts)
                    parts = {rt.CLUSTER: clusters, rt.ENDPOINT: clas}
                groups[key] = (fingerprint, parts)
                for type_url, msgs in parts.items():
                    out[type_url].update(msgs)
            self._groups = groups
        out[rt.CLUSTER].update(self._activator_clusters)
        self.reused = reused
        return out
