"""Make before break: a client that follows Envoy's subscription behaviour never routes to a
cluster it does not hold warm, while placements move, in both protocol variants."""

from __future__ import annotations

import pytest
from xds_client import AdsClient, ask_endpoints_too, decode, hold_everything, mesh, names_of, publish

from xds_server import resource_types as rt

pytestmark = pytest.mark.timeout(30)


class EnvoyLike:
    """Subscribes like Envoy: CDS wildcard, EDS for the clusters it holds, LDS, then RDS ``r``.

    It applies every response and checks, after each, that the route table names only clusters
    it holds and has endpoints for (an Envoy would answer 503 otherwise).
    """

    def __init__(self, client: AdsClient) -> None:
        self.c = client
        self.clusters: set[str] = set()
        self.endpoints: dict[str, list[int]] = {}
        self.route_targets: set[str] = set()
        self.log: list[tuple[str, str, tuple[str, ...]]] = []
        self.eds_names: list[str] = []
        self.last: dict[str, object] = {}
        self.violations: list[str] = []
        self.eds_history: list[dict[str, list[int]]] = []

    async def start(self) -> None:
        if self.c.delta:
            await self.c.delta_req(rt.CLUSTER)
        else:
            await self.c.sotw(rt.CLUSTER)

    async def _eds_subscription(self) -> None:
        want = sorted(self.clusters)
        if want == self.eds_names:
            return
        if self.c.delta:
            sub = [n for n in want if n not in self.eds_names]
            unsub = [n for n in self.eds_names if n not in want]
            await self.c.delta_req(rt.ENDPOINT, sub, unsub)
        else:
            last = self.last.get(rt.ENDPOINT)
            await self.c.sotw(rt.ENDPOINT, want, version=getattr(last, "version_info", ""),
                              nonce=getattr(last, "nonce", ""))
        self.eds_names = want
        for gone in set(self.endpoints) - set(want):
            del self.endpoints[gone]

    def _apply(self, resp) -> None:
        t = resp.type_url
        names = names_of(resp)
        removed = tuple(getattr(resp, "removed_resources", ()))
        self.log.append((rt.short(t), "recv", tuple(names) + tuple(f"-{n}" for n in removed)))
        if t == rt.CLUSTER:
            self.clusters = set(names) if not self.c.delta else (self.clusters | set(names)) - set(removed)
        elif t == rt.ENDPOINT:
            for n in names:
                msg = decode(resp, n)
                self.endpoints[n] = [e.endpoint.address.socket_address.port_value
                                     for loc in msg.endpoints for e in loc.lb_endpoints]
            for n in removed:
                self.endpoints.pop(n, None)
            self.eds_history.append({k: list(v) for k, v in self.endpoints.items()})
        elif t == rt.ROUTE and names:
            rc = decode(resp, "r")
            self.route_targets = {r.route.cluster for vh in rc.virtual_hosts for r in vh.routes}
        for target in self.route_targets:
            if target not in self.clusters or not self.endpoints.get(target):
                self.violations.append(f"after {rt.short(t)} {names}: routes name {target}, "
                                       f"clusters {sorted(self.clusters)}, endpoints {self.endpoints}")

    async def run_until_quiet(self, server) -> None:
        """Apply and answer every response until the server has nothing more to send."""
        while True:
            stream = await self.c.settled(server)
            if not any(ts.pending for ts in stream.types.values()):
                return  # every response answered, and the server is idle
            resp = await self.c.recv()
            self._apply(resp)
            t = resp.type_url
            self.last[t] = resp
            if t == rt.ENDPOINT and not self.c.delta:
                await self.c.ack(resp, sorted(self.clusters))
                self.eds_names = sorted(self.clusters)
            else:
                await self.c.ack(resp, ["r"] if t == rt.ROUTE else None)
            self.log.append((rt.short(t), "ack", ()))
            if t == rt.CLUSTER:
                await self._eds_subscription()
                if rt.LISTENER not in self.last:
                    self.last[rt.LISTENER] = None
                    await (self.c.delta_req(rt.LISTENER) if self.c.delta else self.c.sotw(rt.LISTENER))
            if t == rt.LISTENER and rt.ROUTE not in self.last:
                self.last[rt.ROUTE] = None
                await (self.c.delta_req(rt.ROUTE, ["r"]) if self.c.delta else self.c.sotw(rt.ROUTE, ["r"]))


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_routes_move_only_to_warm_clusters_and_old_clusters_go_last(xds, delta):
    publish(xds.cache, mesh({"a": [1]}, routes={"m": "a"}))
    envoy = EnvoyLike(AdsClient(xds.test_port, delta=delta))
    try:
        await envoy.start()
        await envoy.run_until_quiet(xds)
        assert envoy.route_targets == {"a"} and envoy.endpoints == {"a": [1]}
        envoy.log.clear()
        # a rollout: model m moves from cluster a to a new cluster b, a is dropped
        snap = publish(xds.cache, mesh({"b": [2]}, routes={"m": "b"}))
        await envoy.run_until_quiet(xds)
        assert not envoy.violations, envoy.violations
        assert envoy.route_targets == {"b"} and envoy.clusters == {"b"} and envoy.endpoints == {"b": [2]}
        steps = [(t, what) for t, what, _ in envoy.log]
        # clusters (keeping a), their endpoints, routes, and only then a's removal
        first_rds = steps.index(("rds", "recv"))
        assert ("eds", "ack") in steps[:first_rds]
        cds = [names for t, what, names in envoy.log if t == "cds" and what == "recv"]
        assert "b" in cds[0] and ("-a" not in cds[0] if delta else "a" in cds[0])
        assert [i for i, (t, w) in enumerate(steps) if t == "cds" and w == "recv"][-1] > first_rds
        assert await xds.wait_for_ack(snap.version, timeout=2)
    finally:
        await envoy.c.close()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_hosts_dropped_from_a_shared_cluster_stay_until_routes_move(xds, delta):
    """One cluster per runtime: the copy an old route selects stays in the assignment meanwhile."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    envoy = EnvoyLike(AdsClient(xds.test_port, delta=delta))
    try:
        await envoy.start()
        await envoy.run_until_quiet(xds)
        envoy.log.clear()
        envoy.eds_history.clear()
        snap = publish(xds.cache, mesh({"rt": [2]}, routes={"m": "rt", "n": "rt"}))
        await envoy.run_until_quiet(xds)
        eds = [(what, names) for t, what, names in envoy.log if t == "eds" and what == "recv"]
        rds_at = next(i for i, (t, w, _) in enumerate(envoy.log) if t == "rds" and w == "recv")
        eds_at = [i for i, (t, w, _) in enumerate(envoy.log) if t == "eds" and w == "recv"]
        assert eds_at[0] < rds_at < eds_at[-1] and len(eds) == 2
        assert envoy.eds_history == [{"rt": [2, 1]}, {"rt": [2]}]  # the union, then the target
        assert envoy.endpoints == {"rt": [2]}
        assert await xds.wait_for_ack(snap.version, timeout=2)
    finally:
        await envoy.c.close()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_routes_follow_endpoints_in_flight_of_a_cluster_the_client_holds(xds, delta):
    """A cold model's first copy: new endpoints of a held cluster, and routes to them. The routes
    go out right behind the endpoints, before their ACK: the stream delivers them in order."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        snap = publish(xds.cache, mesh({"rt": [1, 2]}, routes={"m": "rt", "n": "rt"}))
        eds = await c.recv()
        assert eds.type_url == rt.ENDPOINT
        rds = await c.recv()  # no ACK of the endpoints yet
        assert rds.type_url == rt.ROUTE and "/n/" in str(decode(rds, "r"))
        assert not await xds.wait_for_ack(snap.version, timeout=0)  # the endpoints are unconfirmed
        await c.ack(eds, ["rt"])
        await c.ack(rds, ["r"])
        assert await xds.wait_for_ack(snap.version, timeout=2)
    finally:
        await c.close()


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_routes_to_a_new_cluster_wait_until_it_is_warm(xds, delta):
    """A new cluster warms only once applied, and asks for its endpoints then: routes to it wait
    for those endpoints (and may follow them in flight)."""
    publish(xds.cache, mesh({"rt": [1]}, routes={"m": "rt"}))
    c = AdsClient(xds.test_port, delta=delta)
    try:
        await hold_everything(c)
        publish(xds.cache, mesh({"rt": [1], "rt2": [2]}, routes={"m": "rt", "n": "rt2"}))
        cds = await c.recv()
        assert cds.type_url == rt.CLUSTER
        stream = await c.settled(xds)
        assert stream.types[rt.ROUTE].pending is None  # nothing sent: rt2 is not warm yet
        await c.ack(cds)
        await ask_endpoints_too(c, "rt2")
        types = [(await c.recv()).type_url for _ in range(2)]
        assert types == [rt.ENDPOINT, rt.ROUTE]
    finally:
        await c.close()
