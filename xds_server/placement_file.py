"""The placement file that ``msm serve`` reads: models, revisions, copies and traffic rules.

It lets routing be tried without the placement engine. Example::

    instances:
      a: {address: 127.0.0.1, rest_port: 9001, grpc_port: 9002}
    models:
      - name: sklearn-mnist
        revisions:
          - id: sklearn-mnist__v1
            copies: [a]                      # instance names, or inline {instance, address, ...}
          - id: sklearn-mnist__v2
            copies: [a]
        http:                                # optional, VirtualService style; first match wins
          - match: {headers: {x-canary: {exact: "yes"}}}
            route: [{revision: sklearn-mnist__v2}]
          - route:
              - {revision: sklearn-mnist__v1, weight: 90}
              - {revision: sklearn-mnist__v2, weight: 10}
            retries: 2
            timeout: 5s
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from xds_server.mesh_view import (
    Copy,
    Destination,
    HeaderMatch,
    MeshView,
    Model,
    Revision,
    RouteRule,
    check_model,
)


class PlacementFileError(ValueError):
    """The placement file is malformed; the message names the place."""


def load_placement_file(path: str | Path) -> MeshView:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise PlacementFileError(f"{p}: not valid YAML: {e}") from e
    except OSError as e:
        raise PlacementFileError(f"{p}: cannot read: {e.strerror}") from e
    return parse_placement(data, where=str(p))


def _req(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise PlacementFileError(f"{where}: '{key}' is required")
    return obj[key]


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise PlacementFileError(f"{where}: a port must be an integer in 1..65535, got {value!r}")
    return value


def _copy(raw: Any, instances: dict[str, Copy], where: str) -> Copy:
    if isinstance(raw, str):
        if raw not in instances:
            raise PlacementFileError(f"{where}: unknown instance '{raw}'")
        return instances[raw]
    if not isinstance(raw, dict):
        raise PlacementFileError(f"{where}: a copy is an instance name or a mapping")
    return Copy(
        instance=str(_req(raw, "instance", where)),
        address=str(_req(raw, "address", where)),
        rest_port=_port(_req(raw, "rest_port", where), f"{where}.rest_port"),
        grpc_port=_port(_req(raw, "grpc_port", where), f"{where}.grpc_port"),
    )


def parse_duration(value: Any, where: str) -> float:
    """'5s', '250ms', '1m' or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        for suffix in ("ms", "s", "m", "h"):
            if value.endswith(suffix):
                try:
                    seconds = float(value[: -len(suffix)]) * units[suffix]
                except ValueError:
                    break
                break
        else:
            raise PlacementFileError(f"{where}: duration '{value}' needs a unit (ms, s, m, h)")
    else:
        raise PlacementFileError(f"{where}: not a duration: {value!r}")
    if seconds <= 0:
        raise PlacementFileError(f"{where}: a duration must be positive")
    return seconds


def _header_match(name: str, raw: Any, where: str) -> HeaderMatch:
    if isinstance(raw, str):
        return HeaderMatch(name=name, exact=raw)
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in ("exact", "prefix", "regex"):
        raise PlacementFileError(f"{where}: a header match is one of exact / prefix / regex")
    kind, value = next(iter(raw.items()))
    return HeaderMatch(name=name.lower(), **{kind: str(value)})


def parse_rules(raw_rules: Any, where: str) -> tuple[RouteRule, ...]:
    """VirtualService-style ``http`` rules: match (headers), route (weighted), retries, timeout."""
    if raw_rules is None:
        return ()
    if not isinstance(raw_rules, list):
        raise PlacementFileError(f"{where}: 'http' must be a list of rules")
    rules = []
    for i, raw in enumerate(raw_rules):
        w = f"{where}[{i}]"
        if not isinstance(raw, dict):
            raise PlacementFileError(f"{w}: a rule is a mapping")
        headers: list[HeaderMatch] = []
        match = raw.get("match") or {}
        if not isinstance(match, dict):
            raise PlacementFileError(f"{w}.match: must be a mapping")
        for name, cond in (match.get("headers") or {}).items():
            headers.append(_header_match(str(name), cond, f"{w}.match.headers.{name}"))
        route = _req(raw, "route", w)
        if not isinstance(route, list) or not route:
            raise PlacementFileError(f"{w}.route: needs at least one destination")
        dests = []
        for j, d in enumerate(route):
            dw = f"{w}.route[{j}]"
            if not isinstance(d, dict):
                raise PlacementFileError(f"{dw}: a destination is a mapping with 'revision'")
            weight = d.get("weight", 100 if len(route) == 1 else None)
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                raise PlacementFileError(f"{dw}.weight: a non-negative integer is required")
            dests.append(Destination(revision=str(_req(d, "revision", dw)), weight=weight))
        unknown = sorted(set(raw) - {"match", "route", "retries", "timeout"})
        if unknown:
            raise PlacementFileError(f"{w}: unknown field(s) {', '.join(unknown)} (a rule has match, route, "
                                     "retries, timeout; a VirtualService in `msm up` has the rest)")
        retries = raw.get("retries")
        if retries is not None and (not isinstance(retries, int) or retries < 0):
            raise PlacementFileError(f"{w}.retries: a non-negative integer is required")
        timeout = raw.get("timeout")
        rules.append(
            RouteRule(
                destinations=tuple(dests),
                headers=tuple(headers),
                timeout_s=None if timeout is None else parse_duration(timeout, f"{w}.timeout"),
                retries=retries,
            )
        )
    return tuple(rules)


def parse_placement(data: Any, where: str = "placement") -> MeshView:
    if not isinstance(data, dict):
        raise PlacementFileError(f"{where}: the top level must be a mapping with 'models'")
    instances: dict[str, Copy] = {}
    for name, raw in (data.get("instances") or {}).items():
        w = f"{where}: instances.{name}"
        if not isinstance(raw, dict):
            raise PlacementFileError(f"{w}: must be a mapping")
        instances[str(name)] = _copy({"instance": name, **raw}, {}, w)
    models = []
    seen: set[str] = set()
    raw_models = data.get("models") or []
    if not isinstance(raw_models, list):
        raise PlacementFileError(f"{where}: 'models' must be a list")
    for i, raw in enumerate(raw_models):
        w = f"{where}: models[{i}]"
        if not isinstance(raw, dict):
            raise PlacementFileError(f"{w}: a model is a mapping")
        name = str(_req(raw, "name", w))
        w = f"{where}: model '{name}'"
        if name in seen:
            raise PlacementFileError(f"{w}: defined twice")
        seen.add(name)
        revisions = []
        for j, rr in enumerate(_req(raw, "revisions", w) or []):
            rw = f"{w} revisions[{j}]"
            if not isinstance(rr, dict):
                raise PlacementFileError(f"{rw}: a revision is a mapping")
            copies = tuple(
                _copy(c, instances, f"{rw}.copies[{k}]") for k, c in enumerate(rr.get("copies") or [])
            )
            revisions.append(
                Revision(id=str(_req(rr, "id", rw)), runtime=str(rr.get("runtime", "default")),
                         copies=copies)
            )
        model = Model(name=name, revisions=tuple(revisions), rules=parse_rules(raw.get("http"), f"{w} http"))
        problems = check_model(model)
        if problems:
            raise PlacementFileError(f"{w}: " + "; ".join(problems))
        models.append(model)
    return MeshView.of(models)
