"""``msm status`` as text: the control plane's /status JSON, for a terminal."""

from __future__ import annotations

from typing import Any


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MiB"


def _models(models: dict[str, Any]) -> list[str]:
    lines = [f"MODELS ({len(models)})"]
    if not models:
        return [*lines, "  (none)"]
    for name, m in models.items():
        if m.get("failed"):
            state = "FAILED"
        elif m.get("ready"):
            state = "ready"
        elif m.get("loading_copies"):
            state = "loading"
        else:
            state = "not loaded (loads on first request)"
        rev = m.get("active_revision") or m.get("target_revision")
        n = m.get("ready_copies", 0)
        line = f"  {name}: {state}; {n} ready cop{'y' if n == 1 else 'ies'}"
        if m.get("loading_copies"):
            line += f", {m['loading_copies']} loading"
        line += f"; revision {rev}"
        if m.get("target_revision") and m.get("target_revision") != rev:
            canary = m.get("canary_percent")
            line += f" → {m['target_revision']}" + (f" (canary {canary}%)" if canary else " (rolling)")
        if m.get("requests_per_min"):
            line += f"; {m['requests_per_min']} req/min"
        lines.append(line)
        for r, where in (m.get("revisions") or {}).items():
            if where:
                placed = ", ".join(f"{i} {phase}" for i, phase in where.items())
                lines.append(f"      {r}: {placed}")
        if m.get("failed") and m.get("failure"):
            lines.append(f"      error: {m['failure']}")
        elif m.get("waiting"):
            lines.append(f"      waiting: {m['waiting']}")
        for f in m.get("failures") or ():
            if not m.get("failed"):
                lines.append(f"      load failed on {f['instance']} {f['age_s']}s ago: {f['error']}")
    return lines


def _instances(instances: dict[str, Any]) -> list[str]:
    lines = [f"INSTANCES ({len(instances)})"]
    for iid, i in instances.items():
        up = i.get("up", True)
        loaded = i.get("loaded") or {}
        ready = [r for r, c in loaded.items() if c.get("phase") == "ready"]
        line = (f"  {iid} [{i.get('runtime')}] {'up' if up else 'DOWN'}: "
                f"{_mib(i.get('used_bytes'))} used of {_mib(i.get('capacity_bytes'))}, "
                f"{len(ready)} model(s) loaded")
        if i.get("cache_age_s") is not None:
            line += f", cache age {i['cache_age_s']}s"
        lines.append(line)
        for r, c in loaded.items():
            size = _mib(c.get("size_bytes"))
            lines.append(f"      {r} ({c.get('phase')}, {size}, idle {c.get('idle_s')}s)")
        if not up and i.get("last_error"):
            lines.append(f"      last error: {i['last_error']}")
    return lines


def _gateway(gw: dict[str, Any]) -> list[str]:
    lines = ["GATEWAY",
             f"  REST 127.0.0.1:{gw.get('rest_port')}  gRPC 127.0.0.1:{gw.get('grpc_port')}  "
             f"xDS 127.0.0.1:{gw.get('xds_port')}",
             f"  snapshot {gw.get('snapshot_version')}"]
    clients = gw.get("clients") or []
    if not clients:
        lines.append("  no Envoy connected")
    for c in clients:
        types = c.get("types") or {}
        nacks = sum(t.get("nacks", 0) for t in types.values())
        synced = c.get("in_sync")
        proof = f"{c['authenticated']}, " if c.get("authenticated") else ""
        lines.append(f"  envoy {c.get('node_id')} ({proof}{c.get('variant')}): "
                     f"{'in sync' if synced else 'syncing'}" + (f", {nacks} NACK(s)" if nacks else ""))
        for name, t in types.items():
            if t.get("last_error"):
                lines.append(f"      {name} rejected: {t['last_error']}")
    act = gw.get("activator") or {}
    if act:
        direct = act.get("direct_replays")
        lines.append(f"  cold-start requests handled by the activator: {act.get('activations', 0)}"
                     + (f" ({direct} replayed straight to the copy just loaded)" if direct else ""))
    return lines


def _role(status: dict[str, Any]) -> list[str]:
    """Kubernetes mode: which replica this is, and which one places models."""
    leader = status.get("leader") or {}
    if status.get("role") == "leader":
        return [f"CONTROL PLANE {leader.get('this', '')}: leader (places models, writes status)", ""]
    return [f"CONTROL PLANE {leader.get('this', '')}: follows {leader.get('identity') or '(no leader yet)'}; "
            f"it serves the leader's routes. Models are placed by the leader: its status is at "
            f"{leader.get('admin') or '?'}/status", ""]


def format_status(status: dict[str, Any]) -> str:
    lines = _role(status) if "role" in status else []
    lines += _models(status.get("models") or {})
    rollouts = status.get("rollouts") or {}
    if rollouts:
        lines += ["", f"ROLLOUTS ({len(rollouts)})"]
        for model, r in sorted(rollouts.items()):
            where = ""
            if r.get("phase") == "stepping":
                where = (f" (step {r.get('step')} of {len(r.get('steps') or [])}, "
                         f"{r.get('window_s')}s of {r.get('interval_s')}s)")
            lines.append(f"  {model}: {r.get('from')} → {r.get('to')}: {r.get('phase')}, "
                         f"{r.get('weight')}% to the new revision{where}")
            for side in ("new", "old"):
                w = r.get(side)
                if w:
                    lines.append(f"      {side}: {w.get('requests')} requests, "
                                 f"{w.get('error_rate')}% errors, p99 {w.get('p99_ms')} ms")
            if r.get("outcome"):
                lines.append(f"      {r['outcome']}")
            elif r.get("last_check"):
                lines.append(f"      last check: {r['last_check']}")
    traffic = status.get("traffic") or {}
    if traffic:
        lines += ["", f"ROUTED BY VIRTUALSERVICES ({len(traffic)})"]
        lines += [f"  {host}: {source}" for host, source in sorted(traffic.items())]
    errors = status.get("manifest_errors") or {}
    if errors:
        lines += ["", f"MANIFEST PROBLEMS ({len(errors)})"]
        for where, err in sorted(errors.items()):
            first, *rest = str(err).splitlines() or [""]
            lines.append(f"  {where}: {first}")
            lines += [f"      {x}" for x in rest]
    lines += ["", *_instances(status.get("instances") or {})]
    if "gateway" in status:
        lines += ["", *_gateway(status["gateway"])]
    counters = status.get("counters") or {}
    if counters:
        lines += ["", "COUNTERS  " + "  ".join(f"{k} {v}" for k, v in counters.items())]
    return "\n".join(lines)
