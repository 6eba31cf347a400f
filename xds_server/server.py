"""The ADS gRPC server: both protocol variants on grpcio's asyncio API.

Responses are written as prebuilt bytes (see ``snapshot.py``), so the method handlers are
registered with an identity response serialiser instead of the generated servicer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from xds_server import resource_types as rt
from xds_server.access_log import ALS_SERVICE, OnMeasurements, measurements
from xds_server.auth import Authenticator, GatewayToken
from xds_server.cache import SnapshotCache
from xds_server.delta import DeltaStream
from xds_server.metrics import XdsMetrics
from xds_server.snapshot import Snapshot
from xds_server.sotw import SotwStream
from xds_server.stream import Stream

log = logging.getLogger("msm.xds")

AdsStream = SotwStream | DeltaStream
Context = grpc.aio.ServicerContext
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _identity(b: bytes) -> bytes:
    return b


def _peer_identity(context: Context) -> str:
    """The client certificate's identity on a TLS stream with client auth: first URI SAN (SPIFFE),
    else first DNS SAN, else CN; ``""`` without a client certificate."""
    auth = context.auth_context() or {}
    sans = [v.decode() for v in auth.get("x509_subject_alternative_name", [])]
    uris = [v for v in sans if "://" in v]
    names = uris or sans or [v.decode() for v in auth.get("x509_common_name", [])]
    return names[0][:256] if names else ""


@dataclass(frozen=True)
class ServerTls:
    """TLS for the ADS port (PEM bytes). With ``client_ca``, clients must present a certificate it
    signed (mTLS), and each stream is known by that certificate's identity (its first URI or DNS
    SAN, e.g. an Istio workload's ``spiffe://…``, else its CN)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> ServerTls:
        return cls(Path(cert).read_bytes(), Path(key).read_bytes(),
                   Path(client_ca).read_bytes() if client_ca else None)


class XdsServer:
    """Serves the cache's current snapshot to every Envoy that connects over ADS.

    Each listening port has its authenticator (``auth.py``); by default the ``gateway_token``:
    a stream must carry that token in its gRPC metadata (``x-msm-gateway-token``, put there by a
    bootstrap rendered with the same token). A stream that proves nothing is refused with
    UNAUTHENTICATED before it reads anything. A client is then known for what it proved, not for
    the node id it claims.
    """

    def __init__(self, cache: SnapshotCache, registry: CollectorRegistry | None = None, *,
                 gateway_token: str | None = None) -> None:
        self.cache = cache
        self._default_auth = GatewayToken(gateway_token) if gateway_token is not None else None
        self.metrics = XdsMetrics(registry)
        self._servers: list[grpc.aio.Server] = []
        self._streams: dict[int, Stream] = {}
        self._progress = asyncio.Event()
        self.port: int | None = None
        #: where the gateways' measurements go (access log service; None: they are read and dropped)
        self.on_measurements: OnMeasurements | None = None
        cache.on_publish(self._published)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 18000, tls: ServerTls | None = None,
                    auth: Authenticator | None = None, ads: bool = True) -> int:
        """Listen on ``host:port`` (0 picks a free port), with ``tls`` if given; returns the port.

        May be called again for more ports (say a TLS port for Istio gateways beside the plain
        one), each with its own ``auth`` (default: the gateway token, if the server has one).
        ``ads=False``: the port serves the access log service only (a gateway's measurements).
        """
        auth = auth if auth is not None else self._default_auth
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            # clients keep their idle streams alive with pings (Istio's agent every 30 s): gRPC's
            # server would take one per 5 minutes and send GOAWAY "too_many_pings" after that,
            # so an idle gateway's stream would drop every few minutes. One every 0.5 s is fine;
            # a client pinging faster still gets GOAWAY after the default two strikes.
            ("grpc.http2.min_ping_interval_without_data_ms", 500),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._handler(self._sotw, auth),
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_identity),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._handler(self._delta, auth),
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=_identity),
        }
        if ads:
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))
        als = {"StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
            self._als_handler(auth), request_deserializer=als_pb2.StreamAccessLogsMessage.FromString,
            response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ALS_SERVICE, als),))
        if tls is None:
            bound = server.add_insecure_port(f"{host}:{port}")
        else:
            creds = grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)],
                                                root_certificates=tls.client_ca,
                                                require_client_auth=tls.client_ca is not None)
            bound = server.add_secure_port(f"{host}:{port}", creds)
        if bound == 0:
            raise OSError(f"xDS server cannot listen on {host}:{port}")
        await server.start()
        self._servers.append(server)
        if self.port is None:
            self.port = bound
        log.info("%s listening on %s:%d%s", "xDS (ADS, SotW and delta)" if ads else "access log service",
                 host, bound,
                 "" if tls is None else " (TLS, client certificates required)" if tls.client_ca else " (TLS)")
        return bound

    async def stop(self, grace: float = 0.5) -> None:
        for s in list(self._streams.values()):
            s.close()
        servers, self._servers = self._servers, []
        await asyncio.gather(*(s.stop(grace) for s in servers))

    @staticmethod
    def _handler(method: Any, auth: Authenticator | None) -> Any:
        async def handle(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[bytes]:
            async for out in method(requests, context, auth):
                yield out
        return handle

    def _als_handler(self, auth: Authenticator | None) -> Any:
        """The gateways' measurements (access log entries of measured routes), from gateways only."""
        async def handle(requests: AsyncIterator[als_pb2.StreamAccessLogsMessage],
                         context: Context) -> als_pb2.StreamAccessLogsResponse:
            metadata = tuple(context.invocation_metadata() or ())
            if auth is not None and await auth.authenticate(metadata, _peer_identity(context)) is None:
                self.metrics.refused.labels("als").inc()
                log.warning("access log stream from %s refused: %s", context.peer(), auth.refusal)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, auth.refusal)
            async for message in requests:
                batch = measurements(message.http_logs.log_entry)
                if batch and self.on_measurements is not None:
                    self.on_measurements(batch)
            return als_pb2.StreamAccessLogsResponse()
        return handle

    # -- streams ----------------------------------------------------------------------------
    async def _sotw(self, requests: AsyncIterator[Any], context: Context,
                    auth: Authenticator | None) -> AsyncIterator[bytes]:
        stream = SotwStream(self.cache, self.metrics, context.peer(), self._notify)
        stream.authenticated = await self._authenticate(stream, context, auth)
        self._on_done(context, stream)
        async for out in self._serve(stream, requests):
            yield out

    async def _delta(self, requests: AsyncIterator[Any], context: Context,
                     auth: Authenticator | None) -> AsyncIterator[bytes]:
        stream = DeltaStream(self.cache, self.metrics, context.peer(), self._notify)
        stream.authenticated = await self._authenticate(stream, context, auth)
        self._on_done(context, stream)
        async for out in self._serve(stream, requests):
            yield out

    async def _authenticate(self, stream: AdsStream, context: Context, auth: Authenticator | None) -> str:
        """What the client proved: its certificate's identity (mTLS), what ``auth`` accepted, both,
        or ``""`` when nothing is required."""
        peer = _peer_identity(context)
        proofs = [f"mTLS {peer}"] if peer else []
        if auth is None:
            return ", ".join(proofs)
        proved = await auth.authenticate(tuple(context.invocation_metadata() or ()), peer)
        if proved is not None:
            return ", ".join([*proofs, proved])
        self.metrics.refused.labels(stream.variant).inc()
        log.warning("%s stream from %s refused: %s", stream.variant, stream.peer, auth.refusal)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, auth.refusal)
        raise AssertionError("unreachable")  # abort raises

    def _on_done(self, context: Context, stream: AdsStream) -> None:
        """Forget the stream as soon as its RPC is over (cancelled, or the connection gone).

        The handler alone is not enough: when the client dies while a response is being written,
        grpc may leave the handler's generator suspended at that write for good, and the dead
        client would be waited for by every wait_for_ack until it timed out.
        """
        loop = asyncio.get_running_loop()

        def done(_: Any) -> None:  # may run outside the event loop's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._forget, stream)

        context.add_done_callback(done)

    def _forget(self, stream: AdsStream) -> None:
        stream.close()
        if self._streams.pop(stream.id, None) is None:
            return
        self.metrics.clients.labels(stream.variant).dec()
        log.info("%s stream %d from %s closed", stream.variant, stream.id, stream.node_id or stream.peer)
        self._notify()

    async def _serve(self, stream: AdsStream, requests: AsyncIterator[Any]) -> AsyncIterator[bytes]:
        self._streams[stream.id] = stream
        self.metrics.clients.labels(stream.variant).inc()
        self.metrics.streams.labels(stream.variant).inc()
        reader = asyncio.create_task(self._read(stream, requests), name=f"xds-read-{stream.id}")
        try:
            async for out in stream.responses():
                yield out
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self._forget(stream)

    @staticmethod
    async def _read(stream: AdsStream, requests: AsyncIterator[Any]) -> None:
        try:
            async for req in requests:
                stream.on_request(req)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            stream.close()

    def _published(self, snapshot: Snapshot) -> None:
        self.metrics.snapshots.inc()
        for type_url, count in snapshot.counts().items():
            self.metrics.snapshot_resources.labels(rt.short(type_url)).set(count)

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    # -- introspection ----------------------------------------------------------------------
    def clients(self) -> list[Stream]:
        """Open streams, oldest first (each has ``node_id``, ``variant`` and ``describe()``)."""
        return sorted(self._streams.values(), key=lambda s: s.id)

    def _caught_up(self, seq: int, type_urls: list[str] | None, node_id: str | None,
                   at_least_one: bool = False) -> bool:
        streams = [s for s in self._streams.values() if node_id is None or s.node_id == node_id]
        if at_least_one and not streams:
            return False
        return all(s.synced(seq, type_urls) for s in streams)

    async def wait_for_ack(self, version: str, type_urls: Iterable[str] | None = None,
                           node_id: str | None = None, timeout: float = 10.0,
                           at_least_one: bool = False) -> bool:
        """Wait until every client (or ``node_id``) holds snapshot ``version`` or a later one.

        True at once when no client is connected, unless ``at_least_one``: then a client must
        connect and hold it (a gateway that is reconnecting still routes by its old
        configuration). False when the version was never published or ``timeout`` passes first
        (as it does when a client rejected the version).
        """
        seq = self.cache.seq_of(version)
        if seq is None:
            return False
        types = list(type_urls) if type_urls is not None else None
        deadline = time.monotonic() + timeout
        while not self._caught_up(seq, types, node_id, at_least_one):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return self._caught_up(seq, types, node_id, at_least_one)
        return True
