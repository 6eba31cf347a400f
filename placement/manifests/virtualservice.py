"""Istio VirtualServices as msm reads them: traffic policy between models (issue 11, first step).

A VirtualService's ``hosts`` are model names (what clients call: ``/v2/models/{host}/infer``,
``mm-vmodel-id: {host}``); its ``http`` rules, in order, say where a request for one of them goes.
This module reads and checks documents, with Istio's field names and meanings, and decides which
VirtualService holds which host (:func:`resolve_traffic`); composing the policies with the engine's
revisions is :mod:`placement.traffic.compose`.

Every field is either understood or refused with a message naming it: nothing is silently ignored.
All problems of a document are reported at once (``VirtualServiceError.problems``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from placement.traffic.policy import (
    GRPC_STATUS,
    HostPolicy,
    HttpMatch,
    HttpRule,
    Mirror,
    Retries,
    RouteDestination,
    StringMatch,
)
from xds_server.mesh_view import Fault, HeaderOps
from xds_server.regex_check import regex_problem

GROUP = "networking.istio.io"
#: Istio has no field for a split that keeps one caller on one side: this annotation names the
#: request header (a user or session id) that the VirtualService's weighted splits are keyed on
STICKY_ANNOTATION = "serving.msm.io/sticky-header"
VERSIONS = ("v1", "v1beta1", "v1alpha3")
#: a model name (DNS-1123 label-ish, as InferenceService names are); ``*`` is not a model
HOST = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]{1,256}$")  # an HTTP token: no ':', no spaces
#: headers a rule may not change: they say where the request goes and how its body is framed
_RESERVED_HEADERS = frozenset({"host", "mm-vmodel-id", "content-length", "content-type",
                               "transfer-encoding", "te", "connection"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(h|m|s|ms|us|µs|ns)$")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
#: retryOn conditions Envoy's router knows (Istio passes them through)
RETRY_ON = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable"})


class VirtualServiceError(ValueError):
    def __init__(self, where: str, problems: list[str]) -> None:
        super().__init__(f"{where}: " + "; ".join(problems))
        self.where, self.problems = where, problems


@dataclass(frozen=True, slots=True)
class VirtualService:
    namespace: str
    name: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]
    http: tuple[HttpRule, ...]
    sticky_header: str | None = None  # annotation STICKY_ANNOTATION: splits keyed on this header


def duration_s(value: Any) -> float:
    """An Istio duration (``1s``, ``250ms``, ``1.5s``, ``2m``) in seconds; ValueError otherwise."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a duration like 1s or 250ms")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


class _Reader:
    """Collects every problem of one document instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, where: str, why: str) -> None:
        self.problems.append(f"{where}: {why}")

    def fields(self, obj: Any, where: str, known: set[str], refused: Mapping[str, str] | None = None) -> dict:
        if not isinstance(obj, dict):
            self.bad(where, "not an object")
            return {}
        for key in obj:
            if refused and key in refused:
                self.bad(f"{where}.{key}", f"not supported by msm: {refused[key]}")
            elif key not in known:
                self.bad(f"{where}.{key}", "unknown field")
        return obj

    def percent(self, obj: Any, where: str) -> float:
        if obj is None:
            return 100.0
        d = self.fields(obj, where, {"value"})
        v = d.get("value")
        if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 100:
            self.bad(f"{where}.value", "a percentage from 0 to 100")
            return 100.0
        return float(v)

    def duration(self, value: Any, where: str) -> float | None:
        try:
            return duration_s(value)
        except ValueError as e:
            self.bad(where, str(e))
            return None

    def string_match(self, obj: Any, where: str) -> StringMatch | None:
        d = self.fields(obj, where, {"exact", "prefix", "regex"})
        given = {k: v for k, v in d.items() if k in ("exact", "prefix", "regex")}
        if len(given) != 1:
            self.bad(where, "exactly one of exact, prefix, regex")
            return None
        (kind, value), = given.items()
        if not isinstance(value, str):
            self.bad(f"{where}.{kind}", "a string")
            return None
        if kind == "regex":
            why = regex_problem(value)  # RE2 itself, and Envoy's limit on its program size
            if why is not None:
                self.bad(f"{where}.regex", why)
                return None
        return StringMatch(**{kind: value})

    def host(self, value: Any, where: str) -> str | None:
        if not isinstance(value, str) or not HOST.match(value):
            self.bad(where, f"{value!r} is not a model name (lowercase letters, digits, '-', '.')")
            return None
        return value

    def header_ops(self, obj: Any, where: str) -> HeaderOps:
        d = self.fields(obj, where, {"set", "add", "remove"})
        out: dict[str, Any] = {}
        for op in ("set", "add"):
            pairs = d.get(op) or {}
            if not isinstance(pairs, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in pairs.items()):
                self.bad(f"{where}.{op}", "a map of header names to strings")
                pairs = {}
            for k in pairs:
                self.header_name(k, f"{where}.{op}.{k}")
            out[op] = tuple(sorted((k.lower(), v) for k, v in pairs.items()))
        remove = d.get("remove") or []
        if not isinstance(remove, list) or not all(isinstance(h, str) for h in remove):
            self.bad(f"{where}.remove", "a list of header names")
            remove = []
        for i, h in enumerate(remove):
            self.header_name(h, f"{where}.remove[{i}]")
        out["remove"] = tuple(h.lower() for h in remove)
        return HeaderOps(**out)

    def header_name(self, name: str, where: str) -> None:
        low = name.lower()
        if not _HEADER_NAME.match(low):
            self.bad(where, f"{name!r} is not a header name")
        elif low in _RESERVED_HEADERS or low.startswith(("x-msm-", "x-envoy-", "grpc-")):
            self.bad(where, f"{name!r} is the gateway's to set: routing and the data path depend on it")


_RULE_REFUSED = {
    "redirect": "a model route answers inference, it does not redirect",
    "rewrite": "the path names the model; rewriting it is not supported",
    "delegate": "delegate VirtualServices are not supported",
    "directResponse": "a direct response is not inference",
    "corsPolicy": "CORS is not configured per model",
}
_MATCH_REFUSED = {k: "msm matches on uri and headers only" for k in (
    "method", "queryParams", "scheme", "authority", "port", "sourceLabels", "sourceNamespace",
    "gateways", "withoutHeaders", "ignoreUriCase", "statPrefix")}


def _rule(r: _Reader, obj: Any, where: str) -> HttpRule | None:
    known = {"name", "match", "route", "mirror", "mirrorPercentage", "mirrors", "fault", "retries", "timeout",
             "headers"}
    d = r.fields(obj, where, known, _RULE_REFUSED)
    before = len(r.problems)
    matches = []
    for i, m in enumerate(d.get("match") or []):
        mw = f"{where}.match[{i}]"
        md = r.fields(m, mw, {"name", "uri", "headers"}, _MATCH_REFUSED)
        uri = r.string_match(md["uri"], f"{mw}.uri") if "uri" in md else None
        headers = []
        hd = md.get("headers") or {}
        if not isinstance(hd, dict):
            r.bad(f"{mw}.headers", "a map of header names to matches")
            hd = {}
        for name, sm in sorted(hd.items()):
            parsed = r.string_match(sm, f"{mw}.headers.{name}")
            if parsed is not None:
                headers.append((str(name).lower(), parsed))
        matches.append(HttpMatch(uri, tuple(headers)))
    route = []
    dests = d.get("route")
    if not isinstance(dests, list) or not dests:
        r.bad(f"{where}.route", "at least one destination")
        dests = []
    lone = len(dests) == 1  # Istio: a rule's only destination takes all its traffic, whatever its weight
    for i, dest in enumerate(dests):
        dw = f"{where}.route[{i}]"
        dd = r.fields(dest, dw, {"destination", "weight", "headers"})
        dst = r.fields(dd.get("destination"), f"{dw}.destination", {"host"},
                       {"subset": "a model's revisions are msm's, not subsets",
                        "port": "the gateway's ports are fixed (REST and gRPC)"})
        host = r.host(dst.get("host"), f"{dw}.destination.host")
        if "headers" in dd:
            r.bad(f"{dw}.headers", "not supported by msm: set headers on the rule")
        weight = dd.get("weight", 100 if lone else None)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
            r.bad(f"{dw}.weight", "an integer from 0 to 100 (required when a rule has several destinations)")
            continue
        if host is not None:
            route.append(RouteDestination(host, 100 if lone else weight))
    if len(dests) > 1 and len(route) == len(dests) and sum(x.weight for x in route) != 100:
        r.bad(f"{where}.route", f"weights add up to {sum(x.weight for x in route)}, not 100")
    if len({x.host for x in route}) != len(route):
        r.bad(f"{where}.route", "a model appears twice")
    mirrors = []
    if "mirror" in d and "mirrors" in d:
        r.bad(where, "mirror and mirrors together")
    if "mirror" in d:
        m = r.fields(d["mirror"], f"{where}.mirror", {"host"},
                     {"subset": "a model's revisions are msm's", "port": "fixed ports"})
        host = r.host(m.get("host"), f"{where}.mirror.host")
        if host is not None:
            mirrors.append(Mirror(host, r.percent(d.get("mirrorPercentage"), f"{where}.mirrorPercentage")))
    elif "mirrorPercentage" in d:
        r.bad(f"{where}.mirrorPercentage", "without mirror")
    for i, m in enumerate(d.get("mirrors") or []):
        mw = f"{where}.mirrors[{i}]"
        md = r.fields(m, mw, {"destination", "percentage"})
        dst = r.fields(md.get("destination"), f"{mw}.destination", {"host"},
                       {"subset": "a model's revisions are msm's", "port": "fixed ports"})
        host = r.host(dst.get("host"), f"{mw}.destination.host")
        if host is not None:
            mirrors.append(Mirror(host, r.percent(md.get("percentage"), f"{mw}.percentage")))
    fault = None
    if "fault" in d:
        fd = r.fields(d["fault"], f"{where}.fault", {"delay", "abort"})
        delay = r.fields(fd.get("delay") or {}, f"{where}.fault.delay", {"fixedDelay", "percentage"},
                         {"exponentialDelay": "Envoy's fault filter has fixed delays only",
                          "percent": "deprecated: use percentage"})
        abort = r.fields(fd.get("abort") or {}, f"{where}.fault.abort",
                         {"httpStatus", "grpcStatus", "percentage"},
                         {"http2Error": "not supported by msm", "percent": "deprecated: use percentage"})
        delay_s = (r.duration(delay["fixedDelay"], f"{where}.fault.delay.fixedDelay")
                   if "fixedDelay" in delay else None)
        if delay and "fixedDelay" not in delay:
            r.bad(f"{where}.fault.delay", "fixedDelay is required")
        status = abort.get("httpStatus")
        grpc_status = abort.get("grpcStatus")
        if abort and (status is None) == (grpc_status is None):
            r.bad(f"{where}.fault.abort", "exactly one of httpStatus, grpcStatus")
        if status is not None and (not isinstance(status, int) or isinstance(status, bool)
                                   or not 200 <= status <= 599):
            r.bad(f"{where}.fault.abort.httpStatus", "an HTTP status from 200 to 599")
            status = None
        if grpc_status is not None and grpc_status not in GRPC_STATUS:
            r.bad(f"{where}.fault.abort.grpcStatus",
                  f"{grpc_status!r} is not a gRPC status name like UNAVAILABLE")
            grpc_status = None
        if not delay and not abort:
            r.bad(f"{where}.fault", "a delay or an abort")
        fault = Fault(delay_s, r.percent(delay.get("percentage"), f"{where}.fault.delay.percentage"),
                      status, None if grpc_status is None else GRPC_STATUS[grpc_status],
                      r.percent(abort.get("percentage"), f"{where}.fault.abort.percentage"))
    retries = None
    if "retries" in d:
        rd = r.fields(d["retries"], f"{where}.retries", {"attempts", "perTryTimeout", "retryOn"},
                      {"retryRemoteLocalities": "one locality here",
                       "retryIgnorePreviousHosts": "always on in msm",
                       "backoff": "Envoy's default backoff is used"})
        attempts = rd.get("attempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts <= 10:
            r.bad(f"{where}.retries.attempts", "an integer from 0 to 10")
            attempts = 0
        per_try = r.duration(rd["perTryTimeout"], f"{where}.retries.perTryTimeout") \
            if "perTryTimeout" in rd else None
        on = rd.get("retryOn", "")
        conditions = tuple(c.strip() for c in on.split(",") if c.strip()) if isinstance(on, str) else ()
        if not isinstance(on, str):
            r.bad(f"{where}.retries.retryOn", "a comma-separated string")
        for c in conditions:
            if c not in RETRY_ON and not c.isdigit():
                r.bad(f"{where}.retries.retryOn", f"{c!r} is not a retry condition Envoy knows")
        retries = Retries(attempts, per_try, conditions)
    timeout = r.duration(d["timeout"], f"{where}.timeout") if "timeout" in d else None
    hd = r.fields(d.get("headers") or {}, f"{where}.headers", {"request", "response"})
    req = r.header_ops(hd["request"], f"{where}.headers.request") if "request" in hd else HeaderOps()
    resp = r.header_ops(hd["response"], f"{where}.headers.response") if "response" in hd else HeaderOps()
    name = d.get("name", "")
    if not isinstance(name, str):
        r.bad(f"{where}.name", "a string")
        name = ""
    if len(r.problems) > before:
        return None
    return HttpRule(name, tuple(matches), tuple(route), tuple(mirrors), fault, retries, timeout, req, resp)


def parse_virtual_service(doc: Any, default_namespace: str = "default") -> VirtualService:
    """The VirtualService ``doc`` (a parsed YAML/JSON object); VirtualServiceError listing every problem."""
    r = _Reader()
    d = r.fields(doc, "VirtualService", {"apiVersion", "kind", "metadata", "spec", "status"})
    meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    ns = meta.get("namespace") or default_namespace
    where = f"VirtualService {ns}/{name or '?'}"
    group, _, version = str(d.get("apiVersion") or "").partition("/")
    if group != GROUP or version not in VERSIONS:
        readable = ", ".join(f"{GROUP}/{v}" for v in VERSIONS)
        r.bad("apiVersion", f"{d.get('apiVersion')!r}: msm reads {readable}")
    if d.get("kind") != "VirtualService":
        r.bad("kind", f"{d.get('kind')!r}, not VirtualService")
    if not name:
        r.bad("metadata.name", "required")
    spec = r.fields(d.get("spec"), "spec", {"hosts", "gateways", "http", "exportTo"},
                    {"tcp": "models are reached over HTTP and gRPC only",
                     "tls": "TLS routes are not models'"})
    hosts_raw = spec.get("hosts")
    hosts: list[str] = []
    if not isinstance(hosts_raw, list) or not hosts_raw:
        r.bad("spec.hosts", "at least one model name")
    else:
        for i, h in enumerate(hosts_raw):
            if (parsed := r.host(h, f"spec.hosts[{i}]")) is not None:
                hosts.append(parsed)
        if len(set(hosts)) != len(hosts):
            r.bad("spec.hosts", "a name appears twice")
    gateways = spec.get("gateways") or []
    if not isinstance(gateways, list) or not all(isinstance(g, str) for g in gateways):
        r.bad("spec.gateways", "a list of gateway names")
        gateways = []
    exported = spec.get("exportTo")
    if exported is not None and (not isinstance(exported, list)
                                 or not all(isinstance(x, str) for x in exported)):
        r.bad("spec.exportTo", "a list of namespaces")  # read, not used: one gateway serves every namespace
    rules = []
    http = spec.get("http")
    if not isinstance(http, list) or not http:
        r.bad("spec.http", "at least one rule")
        http = []
    for i, rule in enumerate(http):
        parsed_rule = _rule(r, rule, f"spec.http[{i}]")
        if parsed_rule is not None:
            rules.append(parsed_rule)
    sticky = None
    annotations = meta.get("annotations")
    if isinstance(annotations, dict) and STICKY_ANNOTATION in annotations:
        sticky = annotations[STICKY_ANNOTATION]
        if not isinstance(sticky, str):
            r.bad(f"metadata.annotations.{STICKY_ANNOTATION}", "a request header name")
            sticky = None
        else:
            before = len(r.problems)
            r.header_name(sticky, f"metadata.annotations.{STICKY_ANNOTATION}")
            sticky = sticky.lower() if len(r.problems) == before else None
    if r.problems:
        raise VirtualServiceError(where, r.problems)
    return VirtualService(ns, name, tuple(hosts), tuple(gateways), tuple(rules), sticky)


def key_of(vs: VirtualService) -> str:
    return f"{vs.namespace}/{vs.name}"


@dataclass(frozen=True, slots=True)
class Claim:
    """A VirtualService document as resolution sees it: where it came from and its claim order."""

    vs: VirtualService
    source: str  # what messages name: ``file doc N`` or ``VirtualService ns/name``
    error_key: str  # where its problems are reported (its file, or the object)
    order: tuple = ()


@dataclass(frozen=True)
class Traffic:
    """The accepted VirtualServices (by ``namespace/name``) and the policy of each host they hold."""

    services: dict[str, VirtualService]
    policies: dict[str, HostPolicy]
    sources: dict[str, str]  # namespace/name -> where it came from


def _problems_with(vs: VirtualService, model_ns: Mapping[str, str], held: Mapping[str, str]) -> list[str]:
    """Why ``vs`` cannot route now: its hosts and destinations against the models and the hosts
    other VirtualServices already hold (host -> their namespace/name)."""
    out = []
    for host in vs.hosts:
        ns = model_ns.get(host)
        if ns is not None and ns != vs.namespace:
            out.append(f"host {host} is the InferenceService of namespace {ns}; a VirtualService of "
                       f"namespace {vs.namespace} cannot route it")
        elif host in held:
            out.append(f"host {host} is already routed by VirtualService {held[host]}, which stays in use")
    for rule_index, rule in enumerate(vs.http):
        for host in sorted(rule.hosts()):
            ns = model_ns.get(host)
            if ns is None:
                out.append(f"http[{rule_index}]: destination {host} is not an InferenceService msm serves")
            elif ns != vs.namespace:
                out.append(f"http[{rule_index}]: destination {host} is in namespace {ns}; "
                           f"a VirtualService routes to its own namespace's models")
    return out


def resolve_traffic(claims: list[Claim], model_ns: Mapping[str, str],
                    incumbents: Mapping[str, VirtualService] | None = None) -> tuple[Traffic, dict[str, str]]:
    """Which VirtualServices route which hosts, and the problems of the others (by error key).

    ``model_ns``: the InferenceServices served, name -> namespace. ``incumbents``: the
    VirtualServices accepted last time, by namespace/name. A host is held by one VirtualService:
    the incumbent keeps it, otherwise the first in claim order. A VirtualService that cannot route
    (a destination that is not served, a host held by another or by another namespace's model)
    is refused whole, and its previous version, if it had one that still routes, stays in use.
    """
    incumbents = incumbents or {}
    held: dict[str, str] = {}
    services: dict[str, VirtualService] = {}
    sources: dict[str, str] = {}
    errors: dict[str, str] = {}

    def rank(c: Claim) -> tuple:
        prev = incumbents.get(key_of(c.vs))
        holds = prev is not None and bool(set(prev.hosts) & set(c.vs.hosts))
        return (0 if holds else 1, c.order)

    def accept(vs: VirtualService, source: str) -> None:
        services[key_of(vs)] = vs
        sources[key_of(vs)] = source
        for h in vs.hosts:
            held[h] = key_of(vs)

    for c in sorted(claims, key=rank):
        key = key_of(c.vs)
        if key in services:
            errors[c.error_key] = (f"{c.source}: VirtualService {key} is already defined in {sources[key]}, "
                                   "which stays in use; this one is ignored")
            continue
        problems = _problems_with(c.vs, model_ns, held)
        if not problems:
            accept(c.vs, c.source)
            continue
        msg = f"{c.source} VirtualService {key}: " + "; ".join(problems)
        prev = incumbents.get(key)
        if prev is not None and prev != c.vs and not _problems_with(prev, model_ns, held):
            accept(prev, c.source)
            msg += "; its previous version stays in use"
        errors[c.error_key] = f"{errors[c.error_key]}\n{msg}" if c.error_key in errors else msg
    policies = {h: HostPolicy(h, f"VirtualService {key}", services[key].http, services[key].sticky_header)
                for h, key in held.items()}
    return Traffic(services, policies, sources), errors


def document_problems(doc: Any, where: str) -> list[str]:
    """Every problem of a VirtualService document, ``where`` prefixed: msm's checks, then what the
    Istio CRD schema finds at fields msm's checks did not already report."""
    from placement.manifests.validation import schema_problems

    try:
        parse_virtual_service(doc)
        own: list[str] = []
    except VirtualServiceError as e:
        own = e.problems
    messages = [f"{where}: {p}" for p in own]
    seen = [p.split(":", 1)[0] for p in own]
    for path, problem in schema_problems(doc) if isinstance(doc, dict) else []:
        if any(path == s or path.startswith((s + ".", s + "[")) for s in seen):
            continue
        messages.append(f"{where}: {path} {problem} (Istio CRD schema)")
    return messages
