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
    Fault,
    HeaderMatch,
    HeaderOps,
    MeasureEndpoint,
    MeshView,
    Mirror,
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
                "timeout_s": r.timeout_s, "retries": r.retries,
                "per_try_timeout_s": r.per_try_timeout_s, "retry_on": r.retry_on,
                "fault": None if r.fault is None else {
                    "delay_s": r.fault.delay_s, "delay_percent": r.fault.delay_percent,
                    "abort_http_status": r.fault.abort_http_status,
                    "abort_grpc_status": r.fault.abort_grpc_status, "abort_percent": r.fault.abort_percent},
                "request_headers": ops(r.request_headers), "response_headers": ops(r.response_headers),
                "sticky_header": r.sticky_header,
                "mirrors": [{"model": m.model, "percent": m.percent} for m in r.mirrors]}

    def ops(o: HeaderOps) -> dict[str, Any]:
        return {"set": [list(p) for p in o.set], "add": [list(p) for p in o.add], "remove": list(o.remove)}

    a = view.activator
    m = view.measure
    return {
        **({"measure": {"address": m.address, "port": m.port}} if m is not None else {}),
        "activator": None if a is None else {"address": a.address, "rest_port": a.rest_port,
                                             "grpc_port": a.grpc_port},
        "models": [{"name": m.name, "rules": [rule(r) for r in m.rules], "revisions": [
            {"id": r.id, "runtime": r.runtime, **({"model": r.model} if r.model is not None else {}),
             **({"measured": True} if r.measured else {}),
             "copies": [
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


def _number(obj: Any, key: str, where: str, optional: bool = True) -> float | None:
    value = _get(obj, key, (int, float), where, optional)
    return None if value is None else float(value)


def _fault(data: Any, where: str) -> Fault | None:
    if data is None:
        return None
    w = f"{where}.fault"
    return Fault(_number(data, "delay_s", w), _number(data, "delay_percent", w, False) or 0.0,
                 _get(data, "abort_http_status", int, w, True), _get(data, "abort_grpc_status", int, w, True),
                 _number(data, "abort_percent", w, False) or 0.0)


def _pairs(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value):
        raise ValueError(f"{where}: not a list of [name, value] pairs")
    return tuple((k, v) for k, v in value)


def _ops(data: Any, where: str) -> HeaderOps:
    if data is None:
        return HeaderOps()
    remove = _get(data, "remove", list, where)
    if not all(isinstance(h, str) for h in remove):
        raise ValueError(f"{where}.remove: not a list of header names")
    return HeaderOps(_pairs(_get(data, "set", list, where), f"{where}.set"),
                     _pairs(_get(data, "add", list, where), f"{where}.add"), tuple(remove))


def view_from_dict(data: Any) -> MeshView:
    """The view ``data`` describes; ValueError naming the first thing that is wrong."""
    act = _get(data, "activator", dict, "view", optional=True)
    activator = None if act is None else ActivatorEndpoint(
        _get(act, "address", str, "activator"), _port(act, "rest_port", "activator"),
        _port(act, "grpc_port", "activator"))
    ms = _get(data, "measure", dict, "view", optional=True)
    measure = None if ms is None else MeasureEndpoint(_get(ms, "address", str, "measure"),
                                                      _port(ms, "port", "measure"))
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
            revisions.append(Revision(_get(r, "id", str, rw), _get(r, "runtime", str, rw), copies,
                                      _get(r, "model", str, rw, True),
                                      bool(_get(r, "measured", bool, rw, True))))
        rules = []
        for j, r in enumerate(_get(m, "rules", list, w)):
            rw = f"{w}.rules[{j}]"
            dests = tuple(Destination(_get(d, "revision", str, rw), _get(d, "weight", int, rw))
                          for d in _get(r, "destinations", list, rw))
            headers = tuple(HeaderMatch(_get(h, "name", str, rw), _get(h, "exact", str, rw, True),
                                        _get(h, "prefix", str, rw, True), _get(h, "regex", str, rw, True))
                            for h in _get(r, "headers", list, rw))
            timeout = _get(r, "timeout_s", (int, float), rw, True)
            per_try = _get(r, "per_try_timeout_s", (int, float), rw, True)
            rules.append(RouteRule(dests, headers, None if timeout is None else float(timeout),
                                   _get(r, "retries", int, rw, True),
                                   None if per_try is None else float(per_try),
                                   _get(r, "retry_on", str, rw, True), _fault(r.get("fault"), rw),
                                   _ops(r.get("request_headers"), f"{rw}.request_headers"),
                                   _ops(r.get("response_headers"), f"{rw}.response_headers"),
                                   _get(r, "sticky_header", str, rw, True),
                                   tuple(Mirror(_get(m, "model", str, f"{rw}.mirrors"),
                                                float(_get(m, "percent", (int, float), f"{rw}.mirrors")))
                                         for m in (_get(r, "mirrors", list, rw, True) or ()))))
        model = Model(_get(m, "name", str, w), tuple(revisions), tuple(rules))
        problems = check_model(model)
        if problems:
            raise ValueError(f"model {model.name}: {'; '.join(problems)}")
        models.append(model)
    return MeshView({m.name: m for m in models}, activator, measure)
