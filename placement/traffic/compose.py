"""One place composes a model's routing: the user's policy over the engine's revisions.

The engine's mesh view says, per model, which revisions take traffic (a rolling update or a
canary share as a weighted rule) and which have ready copies. A :class:`HostPolicy` (a
VirtualService) replaces the routing of its host: each of its rules sends its requests to models,
and a destination model takes the share the engine gives each of its revisions. So a
VirtualService splitting 90/10 between ``a`` and ``b`` while ``b`` is in a 20 % canary sends 2 % of
the host's traffic to ``b``'s new revision. Whether a revision has copies (or goes through the
activator) stays translation's decision, from the same copies the engine reported.

A host that is not a model of the view becomes a virtual model name: it exists only through its
policy. Revisions of other models that a host's rules name are *borrowed* (``Revision.model``
set): routes name them; clusters stay their owner's.

Pure: no I/O, no clock. ``compose`` never produces a model :func:`check_model` would refuse;
a policy it cannot apply is left out and said in the returned problems.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from placement.traffic.policy import HostPolicy, HttpMatch, HttpRule, StringMatch
from xds_server.mesh_view import (
    Destination,
    HeaderMatch,
    MeshView,
    Mirror,
    Model,
    Revision,
    RouteRule,
    check_model,
)

#: A destination's weight (0-100) times its revisions' engine shares, out of this many
SCALE = 1_000_000
PATH = ":path"


def engine_split(model: Model) -> list[tuple[str, int]]:
    """(revision, weight) of the model's unconditional routing: where a request for it goes."""
    for rule in model.effective_rules():
        if not rule.headers:
            return [(d.revision, d.weight) for d in rule.destinations if d.weight > 0]
    return []


def _header(name: str, m: StringMatch) -> HeaderMatch:
    return HeaderMatch(name, exact=m.exact, prefix=m.prefix, regex=m.regex)


def _conditions(match: HttpMatch | None) -> tuple[HeaderMatch, ...]:
    if match is None:
        return ()
    out = [_header(name, m) for name, m in match.headers]
    if match.uri is not None:
        out.append(_header(PATH, match.uri))
    return tuple(out)


class _Host:
    """Builds one host's model; collects the revisions its rules borrow."""

    def __init__(self, host: str, view: MeshView) -> None:
        self.host, self.view = host, view
        own = view.models.get(host)
        self.revisions: list[Revision] = list(own.revisions) if own is not None else []
        self.known = {r.id for r in self.revisions}
        self.missing: set[str] = set()

    def split(self, model_name: str) -> list[tuple[str, int]]:
        model = self.view.models.get(model_name)
        if model is None:
            self.missing.add(model_name)
            return []
        if model_name != self.host:
            for r in model.own_revisions():
                if r.id not in self.known:
                    self.known.add(r.id)
                    self.revisions.append(replace(r, model=model_name))
        return engine_split(model)

    def destinations(self, rule: HttpRule) -> tuple[Destination, ...]:
        out: list[Destination] = []
        for d in rule.route:
            if d.weight <= 0:
                continue
            split = self.split(d.host)
            total = sum(w for _, w in split)
            for rev, w in split:
                weight = round(d.weight * SCALE * w / (100 * total))
                if weight > 0:
                    out.append(Destination(rev, weight))
        return tuple(out)

    def rules(self, policy: HostPolicy) -> tuple[RouteRule, ...]:
        out: list[RouteRule] = []
        for rule in policy.rules:
            dests = self.destinations(rule)
            retries = rule.retries
            base = RouteRule(
                destinations=dests, timeout_s=rule.timeout_s,
                retries=None if retries is None else retries.attempts,
                per_try_timeout_s=None if retries is None else retries.per_try_timeout_s,
                retry_on=",".join(retries.retry_on) if retries is not None and retries.retry_on else None,
                fault=rule.fault, request_headers=rule.request_headers,
                response_headers=rule.response_headers, sticky_header=policy.sticky_header,
                mirrors=tuple(Mirror(m.host, m.percent) for m in rule.mirrors))
            for m in rule.mirrors:
                if m.host not in self.view.models:
                    self.missing.add(m.host)
            # Istio: the entries of ``match`` are alternatives, the conditions of one entry all hold
            for match in rule.matches or (None,):
                out.append(replace(base, headers=_conditions(match)))
        return tuple(out)


def compose_host(policy: HostPolicy, view: MeshView) -> tuple[Model | None, str | None]:
    """The model ``policy.host`` becomes under its policy, or (None, why it cannot be applied)."""
    h = _Host(policy.host, view)
    rules = h.rules(policy)
    if h.missing:
        return None, (f"{policy.source}: routes to {', '.join(sorted(h.missing))}, "
                      f"which {'is' if len(h.missing) == 1 else 'are'} not served")
    model = Model(policy.host, tuple(h.revisions), rules)
    problems = check_model(model)
    if problems:
        return None, f"{policy.source}: " + "; ".join(problems)
    return model, None


def mark_measured(view: MeshView, measured: frozenset[str]) -> MeshView:
    """``view`` with the revisions in ``measured`` marked: the gateway reports their requests."""
    models = dict(view.models)
    for name, model in view.models.items():
        if any(r.id in measured for r in model.revisions):
            models[name] = replace(model, revisions=tuple(
                replace(r, measured=True) if r.id in measured else r for r in model.revisions))
    return replace(view, models=models)


def compose(view: MeshView, policies: Mapping[str, HostPolicy],
            measured: frozenset[str] = frozenset()) -> tuple[MeshView, dict[str, str]]:
    """``view`` with every host of ``policies`` routed by its policy; problems by host. Revisions
    in ``measured`` (an automated rollout compares them) are marked, wherever they are routed.

    A host whose policy cannot be applied keeps the engine's routing (none for a virtual name).
    """
    if measured:
        view = mark_measured(view, measured)
    if not policies:
        return view, {}
    models = dict(view.models)
    problems: dict[str, str] = {}
    for host in sorted(policies):
        model, problem = compose_host(policies[host], view)
        if model is not None:
            models[host] = model
        else:
            problems[host] = problem or ""
    return replace(view, models=models), problems
