"""Small loopback backends standing in for runtime copies: each answers who served the request.

``RestBackend`` is a minimal asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) that
answers ``{"copy", "method", "path", "model"}``; ``GrpcBackend`` is a grpc.aio generic server
that answers any unary method with JSON ``{"copy", "method", "model_name", "vmodel"}``, where
``model_name`` is field 1 of the request (``ModelInferRequest.model_name``). ``kill()`` drops the
listening socket and every open connection at once, like a crashed pod.

A backend can be made to fail while it keeps listening: ``fail`` is ``None`` (answer), an HTTP
status / a ``grpc.StatusCode`` (answer with that error), ``"reset"`` (REST: read the request, then
reset the connection) or ``"hang"`` (never answer). Every request is counted and the gateway's
``x-request-id`` recorded in ``request_ids``, so a retry of one request shows up under one id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator

import grpc
import pytest

from placement.local.ports import free_port
from xds_server.mesh_view import Copy

#: the two ways the gateway's clusters and routes can be laid out (GatewayOptions)
LAYOUTS = [
    pytest.param({"cluster_layout": "subset", "route_layout": "scoped"}, id="subset-scoped"),
    pytest.param({"cluster_layout": "per_revision", "route_layout": "flat"}, id="per_revision-flat"),
]
DATA_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]})
# the data-path Lua marks a standard V2 body with this header; sending it too keeps these tests
# independent of that filter
DATA_HEADERS = {"x-msm-body": "data", "content-type": "application/json"}

_MODEL = re.compile(r"^/v2/models/([^/?]+)")


def encode_model_name(name: str) -> bytes:
    """A protobuf message whose field 1 (string) is ``name``: a minimal ModelInferRequest."""
    data = name.encode()
    assert len(data) < 128
    return b"\x0a" + bytes([len(data)]) + data


def decode_model_name(msg: bytes) -> str | None:
    """Field 1 of a protobuf message, if it is the first field and a short string."""
    if len(msg) >= 2 and msg[0] == 0x0A and msg[1] < 128:
        return msg[2:2 + msg[1]].decode(errors="replace")
    return None


class RestBackend:
    """An HTTP/1.1 server on 127.0.0.1 that names itself in every answer."""

    def __init__(self, copy: str) -> None:
        self.copy = copy
        self.port = 0
        self.requests = 0
        self.seen: list[dict] = []  # what each request asked for, in order
        self.arrived = asyncio.Event()  # set on each request
        self.request_ids: list[str] = []
        self.fail: int | str | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopped = asyncio.Event()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                self.requests += 1
                self.request_ids.append(headers.get("x-request-id", ""))
                self.seen.append({"method": method, "path": target, "headers": headers})
                self.arrived.set()
                if self.fail == "reset":
                    writer.transport.abort()
                    return
                if self.fail == "hang":
                    await self._stopped.wait()
                    return
                status = 200 if self.fail is None else int(self.fail)
                m = _MODEL.match(target)
                payload = json.dumps({"copy": self.copy, "method": method, "path": target,
                                      "model": m.group(1) if m else None, "body_bytes": len(body),
                                      "headers": headers}).encode()
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n".encode()
                             + f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def kill(self) -> None:
        """Stop listening and reset every open connection, as a crashed process would."""
        self._stopped.set()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.kill()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None


class GrpcBackend:
    """A grpc.aio server answering every unary method with who served it."""

    def __init__(self, copy: str) -> None:
        self.copy = copy
        self.port = 0
        self.requests = 0
        self.seen: list[dict] = []  # what each request asked for, in order
        self.arrived = asyncio.Event()  # set on each request
        self.request_ids: list[str] = []
        self.fail: grpc.StatusCode | str | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()

    async def start(self, port: int = 0) -> int:
        backend = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):  # type: ignore[override]
                method = details.method

                async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    backend.requests += 1
                    md = dict(context.invocation_metadata() or ())
                    backend.request_ids.append(md.get("x-request-id", ""))
                    backend.seen.append({"method": method, "model_name": decode_model_name(request),
                                         "vmodel": md.get("mm-vmodel-id"), "mirror": md.get("x-msm-mirror"),
                                         "msm": {k: v for k, v in md.items() if k.startswith("x-msm-")}})
                    backend.arrived.set()
                    if backend.fail == "hang":
                        await backend._stopped.wait()
                    if isinstance(backend.fail, grpc.StatusCode):
                        await context.abort(backend.fail, f"copy {backend.copy} fails")
                    return json.dumps({"copy": backend.copy, "method": method,
                                       "model_name": decode_model_name(request),
                                       "vmodel": md.get("mm-vmodel-id")}).encode()

                return grpc.unary_unary_rpc_method_handler(unary)

        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((Handler(),))
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        return self.port

    async def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    kill = stop


class CopyBackend:
    """A runtime copy: a REST and a gRPC backend with the same name."""

    def __init__(self, copy: str) -> None:
        self.copy = copy
        self.rest = RestBackend(copy)
        self.grpc = GrpcBackend(copy)

    async def start(self) -> CopyBackend:
        await self.rest.start()
        await self.grpc.start()
        return self

    async def kill(self) -> None:
        self.rest.kill()
        await self.grpc.kill()

    async def stop(self) -> None:
        await self.rest.stop()
        await self.grpc.stop()

    def as_copy(self) -> Copy:
        """This backend as a copy in a mesh view."""
        return Copy(self.copy, "127.0.0.1", self.rest.port, self.grpc.port)


@contextlib.asynccontextmanager
async def running_copies(n: int) -> AsyncIterator[list[CopyBackend]]:
    """``n`` copies named c0, c1, ...; all stopped on the way out."""
    started: list[CopyBackend] = []
    try:
        for i in range(n):
            started.append(await CopyBackend(f"c{i}").start())
        yield started
    finally:
        for b in started:
            await b.stop()


class StaticGateway:
    """A real Envoy loaded with a static bootstrap of translated resources (no xDS server)."""

    def __init__(self, workdir, view, source: str = "static", **options) -> None:
        from xds_server.translate import GatewayOptions

        self.workdir = workdir
        self.view = view
        self.source = source  # "static": a static bootstrap; "ads": msm's xDS server over delta ADS
        self.xds = None
        self.opts = GatewayOptions(rest_port=free_port(), grpc_port=free_port(), **options)
        self.admin_port = free_port()
        self.envoy = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.opts.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.opts.grpc_port}"

    async def start_with(self, prepare) -> StaticGateway:
        """``start``, calling ``prepare(xds_server)`` before Envoy connects (ADS source only)."""
        self._prepare = prepare
        return await self.start()

    async def start(self) -> StaticGateway:
        from xds_server.bootstrap import static_bootstrap
        from xds_server.envoy_process import EnvoyProcess
        from xds_server.translate import translate

        if self.source == "ads":
            from xds_server.bootstrap import render_bootstrap
            from xds_server.cache import SnapshotCache
            from xds_server.server import XdsServer
            from xds_server.snapshot import Snapshot

            cache = SnapshotCache()
            snap = Snapshot.build(translate(self.view, self.opts))
            cache.publish(snap)
            self.xds = XdsServer(cache)
            if getattr(self, "_prepare", None) is not None:
                self._prepare(self.xds)
            port = await self.xds.start("127.0.0.1", 0)
            path = self.workdir / "bootstrap.yaml"
            path.write_text(render_bootstrap("test-gw", "127.0.0.1", port, self.admin_port))
        else:
            boot = static_bootstrap(translate(self.view, self.opts), self.admin_port)
            path = self.workdir / "bootstrap.json"
            path.write_text(json.dumps(boot))
        self.envoy = EnvoyProcess(path, self.admin_port, self.workdir / "envoy.log")
        await self.envoy.start()
        if self.xds is not None:
            assert await self.xds.wait_for_ack(snap.version, timeout=20), "Envoy did not ACK"
        return self

    async def stop(self) -> None:
        if self.envoy is not None:
            await self.envoy.stop()
            self.envoy = None
        if self.xds is not None:
            await self.xds.stop(0)
            self.xds = None


async def first_seen(backend: RestBackend | GrpcBackend, n: int, timeout: float = 10.0) -> list[dict]:
    """The first ``n`` requests ``backend`` saw, once it has seen them."""
    async with asyncio.timeout(timeout):
        while len(backend.seen) < n:
            backend.arrived.clear()
            await backend.arrived.wait()
    return backend.seen[:n]


async def grpc_infer(target: str, model: str, body_model: str | None = None,
                     timeout: float = 5.0, metadata: tuple[tuple[str, str], ...] = (),
                     ) -> tuple[grpc.StatusCode, dict | str]:
    """A unary ModelInfer call through the gateway with ``mm-vmodel-id: model``."""
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            raw = await call(encode_model_name(body_model or model),
                             metadata=(("mm-vmodel-id", model), *metadata), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details() or ""
        return grpc.StatusCode.OK, json.loads(raw)
