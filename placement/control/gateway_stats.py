"""Request counts per revision, read from the gateway's own route statistics.

Every route that reaches a revision carries ``stat_prefix: msm_<revision id>``; Envoy then keeps
``vhost.<vhost>.route.msm_<revision>.upstream_rq_total``. The local mesh polls the gateway's
admin endpoint and feeds the increments to the placement engine (LRU recency, copy scaling).
Counters only grow while Envoy lives; a drop means Envoy restarted, and the new value is the
increment.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping

import aiohttp

from xds_server.translate.names import ROUTE_STAT_PREFIX

log = logging.getLogger("msm.gateway_stats")

_PREFIX = re.escape(ROUTE_STAT_PREFIX)
_ROUTE_TOTAL = re.compile(rf"^vhost\.[^.]+\.route\.{_PREFIX}(?P<rev>.+)\.upstream_rq_total$")
STATS_FILTER = rf"route\.{_PREFIX}.*\.upstream_rq_total$"


def route_stat_prefix(revision_id: str) -> str:
    return f"{ROUTE_STAT_PREFIX}{revision_id}"


def parse_route_totals(stats: Mapping) -> dict[str, int]:
    """Envoy admin ``/stats?format=json`` → {revision id: upstream_rq_total summed over vhosts}."""
    totals: dict[str, int] = {}
    for entry in stats.get("stats", []):
        name = entry.get("name", "")
        m = _ROUTE_TOTAL.match(name)
        if m and "value" in entry:
            totals[m["rev"]] = totals.get(m["rev"], 0) + int(entry["value"])
    return totals


def increments(previous: Mapping[str, int], current: Mapping[str, int]) -> dict[str, int]:
    out = {}
    for rev, value in current.items():
        before = previous.get(rev, 0)
        delta = value - before if value >= before else value
        if delta > 0:
            out[rev] = delta
    return out


class GatewayStatsPoller:
    """Polls an Envoy admin endpoint and reports request increments per revision."""

    def __init__(self, admin_url: str, on_requests: Callable[[str, int], None],
                 interval: float = 1.0) -> None:
        self.admin_url = admin_url
        self.on_requests = on_requests
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, int] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-stats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def poll_once(self, session: aiohttp.ClientSession) -> dict[str, int]:
        url = f"{self.admin_url}/stats"
        params = {"format": "json", "filter": STATS_FILTER}
        async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=5)) as r:
            current = parse_route_totals(await r.json(content_type=None))
        inc = increments(self._last, current)
        self._last = current
        for rev, n in inc.items():
            self.on_requests(rev, n)
        return inc

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.poll_once(session)
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    log.debug("gateway stats not available yet: %s", e)
                await asyncio.sleep(self.interval)
