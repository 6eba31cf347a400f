"""A gRPC ADS client that behaves as Envoy does on the wire, and small resources to serve it."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from xds_server import resource_types as rt
from xds_server.cache import SnapshotCache
from xds_server.snapshot import Snapshot
from xds_server.stream import Stream

TIMEOUT = 5.0
_tags = itertools.count(1)


def cluster(name: str, connect_timeout_s: int = 1) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS,
                            connect_timeout=duration_pb2.Duration(seconds=connect_timeout_s))
    c.eds_cluster_config.eds_config.ads.SetInParent()
    return c


def cla(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    def addr(p: int) -> address_pb2.Address:
        sa = address_pb2.SocketAddress(address="127.0.0.1", port_value=p)
        return address_pb2.Address(socket_address=sa)

    eps = [endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=addr(p)))
           for p in ports]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=eps)])


def route_config(name: str, clusters: dict[str, str]) -> route_pb2.RouteConfiguration:
    """Routes by path prefix ``/<model>/`` to a cluster each."""
    routes = [route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=f"/{model}/"),
        route=route_components_pb2.RouteAction(cluster=c)) for model, c in sorted(clusters.items())]
    return route_pb2.RouteConfiguration(
        name=name, virtual_hosts=[route_components_pb2.VirtualHost(name="all", domains=["*"], routes=routes)])


def listener(name: str, port: int) -> listener_pb2.Listener:
    return listener_pb2.Listener(name=name, address=address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)))


def mesh(clusters: dict[str, list[int]], routes: dict[str, str] | None = None,
         timeouts: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """A small resource set: clusters with endpoints, one listener, one route table."""
    timeouts = timeouts or {}
    out: dict[str, dict[str, Any]] = {
        rt.CLUSTER: {n: cluster(n, timeouts.get(n, 1)) for n in clusters},
        rt.ENDPOINT: {n: cla(n, *ports) for n, ports in clusters.items()},
        rt.LISTENER: {"l": listener("l", 10000)},
        rt.ROUTE: {"r": route_config("r", routes if routes is not None else {n: n for n in clusters})},
    }
    return out


def publish(cache: SnapshotCache, resources: dict[str, dict[str, Any]]) -> Snapshot:
    """Publish a snapshot made from the current one, so streams compare only what changed."""
    snap = Snapshot.build(resources, previous=cache.current)
    cache.publish(snap)
    return snap


def node(node_id: str, tag: str = "", metadata: dict[str, Any] | None = None,
         cluster: str = "test") -> base_pb2.Node:
    n = base_pb2.Node(id=node_id, cluster=cluster, user_agent_name=tag)
    if metadata:
        n.metadata.update(metadata)
    return n


def nack_detail(message: str) -> status_pb2.Status:
    return status_pb2.Status(code=3, message=message)


class AdsClient:
    """One ADS stream. ``delta`` picks DeltaAggregatedResources.

    Its node carries a tag of its own (``user_agent_name``), so that ``stream()`` finds the
    server's side of this very stream even while an older stream of the same node id is open.
    """

    def __init__(self, port: int, node_id: str = "envoy-1", delta: bool = False,
                 metadata: tuple[tuple[str, str], ...] = (),
                 node_metadata: dict[str, Any] | None = None, cluster: str = "test") -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.delta = delta
        self.node_id = node_id
        self.node_metadata = node_metadata
        self.cluster = cluster
        self.tag = f"ads-client-{next(_tags)}"
        self.written = 0  # requests written on the stream
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(metadata=metadata or None)
        self._sent_node = False
        self._next: asyncio.Task[Any] | None = None

    def _node(self) -> dict[str, Any]:
        if self._sent_node:
            return {}
        self._sent_node = True
        return {"node": node(self.node_id, self.tag, self.node_metadata, self.cluster)}

    async def _write(self, req: Any) -> None:
        await self.call.write(req)
        self.written += 1

    def stream(self, server: Any) -> Stream | None:
        """The server's side of this stream, once it has read the first request."""
        return next((s for s in server.clients() if getattr(s, "client_tag", None) == self.tag), None)

    async def settled(self, server: Any, timeout: float = TIMEOUT) -> Stream:
        """Wait until the server has read every request this client wrote and has acted on them.

        Then its send loop is idle: whatever those requests (and every snapshot published so far)
        make it send is in flight (``TypeState.pending``), what it has not sent it will not send
        until something else happens, and ``wait_for_ack(..., timeout=0)`` tells what it knows the
        client holds. A proof of absence without a quiet window. Needs the ``xds`` fixture, which
        lets tests see a stream's ``requests_read`` and whether its loop is ``asleep`` (see conftest.py).
        """
        def idle() -> bool:
            s = self.stream(server)
            return s is not None and s.requests_read == self.written and s.asleep and not s._wake.is_set()

        await until(idle, timeout)
        stream = self.stream(server)
        assert stream is not None
        return stream

    async def sotw(self, type_url: str, names: list[str] | None = None, *, version: str = "",
                   nonce: str = "", error: str | None = None) -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names or [],
                                             version_info=version, response_nonce=nonce, **self._node())
        if error is not None:
            req.error_detail.CopyFrom(nack_detail(error))
        await self._write(req)

    async def ack(self, resp: Any, names: list[str] | None = None) -> None:
        if self.delta:
            await self.delta_req(resp.type_url, nonce=resp.nonce)
        else:
            await self.sotw(resp.type_url, names, version=resp.version_info, nonce=resp.nonce)

    async def nack(self, resp: Any, message: str, names: list[str] | None = None,
                   last_good: str = "") -> None:
        if self.delta:
            await self.delta_req(resp.type_url, nonce=resp.nonce, error=message)
        else:
            await self.sotw(resp.type_url, names, version=last_good, nonce=resp.nonce, error=message)

    async def delta_req(self, type_url: str, subscribe: list[str] | None = None,
                        unsubscribe: list[str] | None = None, *, nonce: str = "", error: str | None = None,
                        initial: dict[str, str] | None = None) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=subscribe or [],
            resource_names_unsubscribe=unsubscribe or [], response_nonce=nonce,
            initial_resource_versions=initial or {}, **self._node())
        if error is not None:
            req.error_detail.CopyFrom(nack_detail(error))
        await self._write(req)

    async def recv(self, timeout: float = TIMEOUT) -> Any:
        if self._next is None:
            self._next = asyncio.ensure_future(self.call.read())
        done, _ = await asyncio.wait({self._next}, timeout=timeout)
        if not done:
            raise TimeoutError("no response")
        task, self._next = self._next, None
        resp = task.result()
        assert resp is not grpc.aio.EOF, "stream closed"
        return resp

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
        self.call.cancel()
        await self.channel.close()


async def hold_everything(c: AdsClient) -> None:
    """Subscribe as Envoy does and ACK each first response: clusters (wildcard), endpoints ``rt``,
    listeners, route table ``r`` (the resources of ``mesh({"rt": ...})``)."""
    steps = ((rt.CLUSTER, None), (rt.ENDPOINT, ["rt"]), (rt.LISTENER, None), (rt.ROUTE, ["r"]))
    for type_url, names in steps:
        await (c.delta_req(type_url, names) if c.delta else c.sotw(type_url, names))
        resp = await c.recv()
        assert resp.type_url == type_url
        await c.ack(resp, names)


async def ask_endpoints_too(c: AdsClient, name: str) -> None:
    """Ask for one more cluster's endpoints beside ``rt``'s, as Envoy does once it has applied a
    new cluster: delta subscribes the name; SotW sends its whole list again."""
    if c.delta:
        await c.delta_req(rt.ENDPOINT, [name])
    else:
        await c.sotw(rt.ENDPOINT, sorted({"rt", name}))


async def until(predicate, timeout: float = TIMEOUT) -> None:
    """Wait for server-side state (a request the client wrote has been read)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def names_of(resp: Any) -> list[str]:
    """Names of the resources a response carries (SotW: decoded from each Any)."""
    if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
        return sorted(r.name for r in resp.resources)
    out = []
    for a in resp.resources:
        msg = {rt.CLUSTER: cluster_pb2.Cluster, rt.ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
               rt.LISTENER: listener_pb2.Listener, rt.ROUTE: route_pb2.RouteConfiguration,
               rt.SCOPED_ROUTE: scoped_route_pb2.ScopedRouteConfiguration}[a.type_url]()
        a.Unpack(msg)
        out.append(msg.cluster_name if isinstance(msg, endpoint_pb2.ClusterLoadAssignment) else msg.name)
    return sorted(out)


def decode(resp: Any, name: str) -> Any:
    if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
        anys = [r.resource for r in resp.resources if r.name == name]
    else:
        anys = list(resp.resources)
    for a in anys:
        msg = {rt.CLUSTER: cluster_pb2.Cluster, rt.ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
               rt.LISTENER: listener_pb2.Listener, rt.ROUTE: route_pb2.RouteConfiguration,
               rt.SCOPED_ROUTE: scoped_route_pb2.ScopedRouteConfiguration}[a.type_url]()
        a.Unpack(msg)
        if getattr(msg, "name", None) == name or getattr(msg, "cluster_name", None) == name:
            return msg
    raise KeyError(name)


__all__ = [
    "AdsClient",
    "cla",
    "cluster",
    "decode",
    "listener",
    "mesh",
    "names_of",
    "publish",
    "route_config",
    "until",
]
