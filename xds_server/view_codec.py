"""A mesh view as JSON and back: how a leader's routes reach the replicas that follow it.

Every control-plane replica serves xDS; only the leader places models. The followers serve the
leader's view, read from its admin port (``/v1/mesh-view``). Decoding checks every field's type
and every model as translation needs it (:func:`check_model`): a malformed answer is a
ValueError, and the follower keeps serving what it had.
"""

from __future__ import annotations

from typing import Any

from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    HeaderMatch,
    MeshView,
    Model,
    Revision,
    RouteRule,
    check_model,
)


def view_to_dict(view: MeshView) -> dict[str, Any]:
    def rule(r: RouteRule) -> dict[str, Any]:
        return {"destinations": [{"revision": d.revision, "weight": d.weight} for d in r.destinations],
                "headers": [{"name": h.name, "exact": h.exact, "prefix": h.prefix, "regex": h.regex}
                            for h in r.headers],
                "timeout_s": r.timeout_s, "retries": r.retries, "mirror": r.mirror}

    a = view.activator
    return {
        "activator": None if a is None else {"address": a.address, "rest_port": a.rest_port,
                                             "grpc_port": a.grpc_port},
        "models": [{"name": m.name, "rules": [rule(r) for r in m.rules], "revisions": [
            {"id": r.id, "runtime": r.runtime, "copies": [
                {"instance": c.instance, "address": c.address, "rest_port": c.rest_port,
                 "grpc_port": c.grpc_port, **({"mesh_tls": True} if c.mesh_tls else {})}
                for c in r.copies]} for r in m.revisions]}
            for m in view.models.values()],
    }


def _get(obj: Any, key: str, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not an object")
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{where}.{key}: {type(value).__name__}, not the expected type")
    return value


def _port(obj: Any, key: str, where: str) -> int:
    value = _get(obj, key, int, where)
    if not 0 < value < 65536:
        raise ValueError(f"{where}.{key}: {value} is not a port")
    return value


def view_from_dict(data: Any) -> MeshView:
    """The view ``data`` describes; ValueError naming the first thing that is wrong."""
    act = _get(data, "activator", dict, "view", optional=True)
    activator = None if act is None else ActivatorEndpoint(
        _get(act, "address", str, "activator"), _port(act, "rest_port", "activator"),
        _port(act, "grpc_port", "activator"))
    models = []
    for i, m in enumerate(_get(data, "models", list, "view")):
        w = f"models[{i}]"
        revisions = []
        for j, r in enumerate(_get(m, "revisions", list, w)):
            rw = f"{w}.revisions[{j}]"
            copies = tuple(Copy(_get(c, "instance", str, f"{rw}.copies[{k}]"),
                                _get(c, "address", str, f"{rw}.copies[{k}]"),
                                _port(c, "rest_port", f"{rw}.copies[{k}]"),
                                _port(c, "grpc_port", f"{rw}.copies[{k}]"),
                                bool(_get(c, "mesh_tls", bool, f"{rw}.copies[{k}]", True)))
                           for k, c in enumerate(_get(r, "copies", list, rw)))
            revisions.append(Revision(_get(r, "id", str, rw), _get(r, "runtime", str, rw), copies))
        rules = []
        for j, r in enumerate(_get(m, "rules", list, w)):
            rw = f"{w}.rules[{j}]"
            dests = tuple(Destination(_get(d, "revision", str, rw), _get(d, "weight", int, rw))
                          for d in _get(r, "destinations", list, rw))
            headers = tuple(HeaderMatch(_get(h, "name", str, rw), _get(h, "exact", str, rw, True),
                                        _get(h, "prefix", str, rw, True), _get(h, "regex", str, rw, True))
                            for h in _get(r, "headers", list, rw))
            timeout = _get(r, "timeout_s", (int, float), rw, True)
            rules.append(RouteRule(dests, headers, None if timeout is None else float(timeout),
                                   _get(r, "retries", int, rw, True), _get(r, "mirror", str, rw, True)))
        model = Model(_get(m, "name", str, w), tuple(revisions), tuple(rules))
        problems = check_model(model)
        if problems:
            raise ValueError(f"model {model.name}: {'; '.join(problems)}")
        models.append(model)
    return MeshView.of(models, activator)
