"""Load on demand: where the gateway sends requests for a model that has no ready copy.

The gateway routes a revision with no ready copy here. The activator asks the controller for an
urgent load, waits until a copy is ready *and* the gateway has ACKed routes to it, then replays
the request through the gateway, which now sends it straight to the copy. Only cold requests take
this path; every other request goes gateway → runtime in one hop.

The gateway names the model to load in ``x-msm-model`` (a VirtualService may send one model's
traffic to another; without it, the model is the one the request names) and the revision the
request was routed to in ``x-msm-revision``. The replay carries ``x-msm-activated`` and that
revision: the gateway routes it to that revision (a split does not throw the dice again, which
could land on another cold revision). If it comes back here (the routes still point at the
activator), it is answered with 503 instead of looping.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
from aiohttp import web

from xds_server.translate.names import ACTIVATE_HEADER, ACTIVATED_HEADER, MODEL_HEADER, REVISION_HEADER

log = logging.getLogger("msm.activator")

_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)")
#: how ensure_ready's reason starts when the model does not exist (deleted while the gateway's
#: routes still named it): the client gets what the gateway answers for an unknown model, 404
UNKNOWN_MODEL = "unknown model"
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}

# ensure_ready(model, timeout_s, revision) -> None when the model (that revision of it, if named)
# is routable, else the reason it is not (starting with UNKNOWN_MODEL when msm has no such model).
EnsureReady = Callable[[str, float, str | None], Awaitable[str | None]]


#: host:port of a runtime or an internal service, as runtime error texts quote them
_ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|\b\d{1,3}(?:\.\d{1,3}){3}|\blocalhost)(:\d{1,5})?\b")


def for_clients(reason: str) -> str:
    """A reason fit for a client: internal addresses are replaced (``msm status`` has them all)."""
    return _ADDRESS.sub("<internal>", reason)


def _json_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")


def _forward_headers(headers) -> dict[str, str]:
    out = {}
    for k, v in headers.items():
        lk = k.lower()
        if lk in _HOP_BY_HOP or lk.startswith("x-envoy-") or lk.startswith(":") or lk == ACTIVATE_HEADER:
            continue
        out[k] = v
    out[ACTIVATED_HEADER] = "1"
    return out


class Activator:
    """REST and gRPC endpoints that load a cold model, then replay the request via the gateway."""

    def __init__(self, ensure_ready: EnsureReady, gateway_host: str, gateway_rest_port: int,
                 gateway_grpc_port: int, timeout_s: float = 120.0) -> None:
        self._ensure_ready = ensure_ready
        self._gateway_rest = f"http://{gateway_host}:{gateway_rest_port}"
        self._gateway_grpc = f"{gateway_host}:{gateway_grpc_port}"
        self._timeout_s = timeout_s
        self._runner: web.AppRunner | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._session: aiohttp.ClientSession | None = None
        self.rest_port: int | None = None
        self.grpc_port: int | None = None
        self.activations = 0

    async def start(self, host: str = "127.0.0.1", rest_port: int = 0, grpc_port: int = 0) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, rest_port)
        await site.start()
        self.rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._channel = grpc.aio.insecure_channel(self._gateway_grpc)
        self._grpc_server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1),
                                                     ("grpc.max_send_message_length", -1)])
        self._grpc_server.add_generic_rpc_handlers((_ReplayHandler(self),))
        self.grpc_port = self._grpc_server.add_insecure_port(f"{host}:{grpc_port}")
        await self._grpc_server.start()

    async def stop(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(0.5)
        if self._channel is not None:
            await self._channel.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _activate(self, model: str, revision: str | None) -> str | None:
        self.activations += 1
        log.info("request for cold model %s: loading on demand", model)
        return await self._ensure_ready(model, self._timeout_s, revision)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        m = _MODEL_PATH.match(request.path)
        if not m:
            return _json_error(404, f"no model in path {request.path}")
        model = request.headers.get(ACTIVATE_HEADER) or m.group(1)
        if request.headers.get(ACTIVATED_HEADER):
            return _json_error(503, f"model '{model}' has no ready copy")
        reason = await self._activate(model, request.headers.get(REVISION_HEADER))
        if reason is not None and reason.startswith(UNKNOWN_MODEL):
            return web.Response(status=404, content_type="application/json",
                                text=json.dumps({"error": "model not found", "path": request.path}))
        if reason is not None:
            return _json_error(503, f"model '{model}' could not be made ready: {for_clients(reason)}")
        body = await request.read()
        assert self._session is not None
        async with self._session.request(request.method, f"{self._gateway_rest}{request.path_qs}",
                                         data=body, headers=_forward_headers(request.headers)) as r:
            payload = await r.read()
            headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=r.status, body=payload, headers=headers)

    async def replay_grpc(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = tuple(context.invocation_metadata() or ())
        model = (next((v for k, v in metadata if k == ACTIVATE_HEADER), None)
                 or next((v for k, v in metadata if k == MODEL_HEADER), None))
        if model is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"missing {MODEL_HEADER} header")
        if any(k == ACTIVATED_HEADER for k, _ in metadata):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model '{model}' has no ready copy")
        revision = next((v for k, v in metadata if k == REVISION_HEADER), None)
        reason = await self._activate(str(model), revision)
        if reason is not None and reason.startswith(UNKNOWN_MODEL):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{model}' not found")
        if reason is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"model '{model}' could not be made ready: {for_clients(reason)}")
        forward = tuple((k, v) for k, v in metadata if not k.startswith(("x-envoy-", ":"))
                        and k not in ("grpc-timeout", "content-type", "user-agent", "te", ACTIVATE_HEADER))
        assert self._channel is not None
        call = self._channel.unary_unary(method)
        try:
            return await call(request, metadata=(*forward, (ACTIVATED_HEADER, "1")), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as e:
            await context.abort(e.code(), e.details() or "")
        raise AssertionError("unreachable")


class _ReplayHandler(grpc.GenericRpcHandler):
    """Accepts any unary method as raw bytes, so the activator needs no knowledge of the protos."""

    def __init__(self, activator: Activator) -> None:
        self._activator = activator

    def service(self, handler_call_details):
        method = handler_call_details.method

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._activator.replay_grpc(method, request, context)

        return grpc.unary_unary_rpc_method_handler(handle)
