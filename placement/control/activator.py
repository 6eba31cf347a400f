"""Load on demand: where the gateway sends requests for a model that has no ready copy.

The gateway routes a revision with no ready copy here. The activator asks the controller for an
urgent load, waits until a copy is ready *and* the gateway has ACKed routes to it, then replays
the request through the gateway, which now sends it straight to the copy. Only cold requests take
this path; every other request goes gateway → runtime in one hop.

A *direct* replay goes sooner: the controller answers with a :class:`DirectCopy` the moment the
copy's load returns (the gateway already holds a view that lists the copy's instance in its
runtime's direct cluster). The replay then carries the view's secret replay token and the copy's
address, and the gateway's direct route for the revision sends it to that copy: no new view, no
ACK to wait for. The gateway, not the activator, still rewrites, transcodes and secures the
request.

The gateway names the model to load in ``x-msm-model`` (a VirtualService may send one model's
traffic to another; without it, the model is the one the request names) and the revision the
request was routed to in ``x-msm-revision``. The replay carries ``x-msm-activated`` and that
revision: the gateway routes it to that revision (a split does not throw the dice again, which
could land on another cold revision). If it comes back here (the routes still point at the
activator), it is answered with 503 instead of looping.

The activator is also where a request goes when the copies it was routed to fail at the
connection level (a killed runtime): the gateway's retries end here (its fallback clusters), with
``x-msm-fallback`` naming the model the client called and the request as it was sent to the copy
(the revision's id in the path or body). The activator has the health checks look at those copies'
instances at once, waits until the routes send the revision to a copy elsewhere, and replays the
request under the client's model name.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

from xds_server.translate.names import (
    ACTIVATE_HEADER,
    ACTIVATED_HEADER,
    COPY_HEADER,
    FALLBACK_HEADER,
    MODEL_HEADER,
    REPLAY_TOKEN_HEADER,
    REVISION_HEADER,
)

log = logging.getLogger("msm.activator")

#: the cold path's histograms (here and the controller's): its phases take milliseconds each
COLD_PATH_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02,
                     0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 120.0)

_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
#: how ensure_ready's reason starts when the model does not exist (deleted while the gateway's
#: routes still named it): the client gets what the gateway answers for an unknown model, 404
UNKNOWN_MODEL = "unknown model"
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}

@dataclass(frozen=True, slots=True)
class DirectCopy:
    """A copy whose load has returned and that the gateway can reach before its routes name it
    (its instance is in the runtime's direct cluster): the held request is replayed to it at once,
    with the replay token and its address (``ip:port`` of its REST and gRPC ports) for the
    gateway's direct route, instead of after a new view and the gateway's ACK of it."""

    token: str
    rest: str
    grpc: str
    #: called once the replay has its answer (or failed): the controller publishes after it
    done: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def finished(self) -> None:
        if self.done is not None:
            self.done()

    def headers(self) -> dict[str, str]:
        """The replay's extra headers (names.REPLAY_TOKEN_HEADER, names.COPY_HEADER)."""
        return {REPLAY_TOKEN_HEADER: self.token,
                COPY_HEADER["rest"]: base64.b64encode(self.rest.encode()).decode(),
                COPY_HEADER["grpc"]: base64.b64encode(self.grpc.encode()).decode()}


# ensure_ready(model, timeout_s, revision, failed_over) -> None when the model (that revision of
# it, if named) is routable, a DirectCopy when a copy is ready that the gateway can reach directly,
# else the reason it is not (a str, starting with UNKNOWN_MODEL when msm has no such model).
# failed_over: the gateway could not deliver the request to the copies it routes to.
EnsureReady = Callable[[str, float, str | None, bool], Awaitable[str | DirectCopy | None]]


#: host:port of a runtime or an internal service, as runtime error texts quote them
_ADDRESS = re.compile(r"(\[[0-9a-fA-F:.]+\]|\b\d{1,3}(?:\.\d{1,3}){3}|\blocalhost)(:\d{1,5})?\b")


def for_clients(reason: str) -> str:
    """A reason fit for a client: internal addresses are replaced (``msm status`` has them all)."""
    return _ADDRESS.sub("<internal>", reason)


def _json_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")


#: the gateway's words to the activator, and a direct replay's (only the activator says those)
_NOT_FORWARDED = frozenset((ACTIVATE_HEADER, FALLBACK_HEADER, REPLAY_TOKEN_HEADER, *COPY_HEADER.values()))


def _forward_headers(headers) -> dict[str, str]:
    out = {}
    for k, v in headers.items():
        lk = k.lower()
        if lk in _HOP_BY_HOP or lk.startswith("x-envoy-") or lk in _NOT_FORWARDED:
            continue
        out[k] = v
    out[ACTIVATED_HEADER] = "1"
    return out


class Activator:
    """REST and gRPC endpoints that load a cold model, then replay the request via the gateway."""

    def __init__(self, ensure_ready: EnsureReady, gateway_host: str, gateway_rest_port: int,
                 gateway_grpc_port: int, timeout_s: float = 120.0,
                 registry: CollectorRegistry | None = None) -> None:
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
        self.failovers = 0  # requests whose copies failed, held here while the model moved
        self.direct_replays = 0  # held requests replayed to their copy before the routes named it
        self._replay_seconds = Histogram(
            "msm_activator_replay_seconds", "A held request's replay through the gateway, from its "
            "copy being routed to until the answer (the request's own work included); kind: cold "
            "(loaded on demand) or failover (its copies had failed)", ["kind"],
            buckets=COLD_PATH_BUCKETS, registry=registry if registry is not None else CollectorRegistry())

    async def start(self, host: str = "127.0.0.1", rest_port: int = 0, grpc_port: int = 0) -> None:
        # the replay's answer goes back as the gateway gave it: its body still in the encoding
        # its Content-Encoding names (a runtime gzips for a client that accepts it)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                                              auto_decompress=False)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, rest_port)
        await site.start()
        self.rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        # no limits of gRPC's own (4 MiB in): the gateway bounds requests, and outputs may be large
        unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self._channel = grpc.aio.insecure_channel(self._gateway_grpc, options=unlimited)
        self._grpc_server = grpc.aio.server(options=unlimited)
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

    def _observe_replay(self, started: float, failed_over: bool) -> None:
        self._replay_seconds.labels("failover" if failed_over else "cold").observe(time.monotonic() - started)

    async def _activate(self, model: str, revision: str | None, failed_over: bool) -> str | DirectCopy | None:
        if failed_over:
            self.failovers += 1
            log.warning("request for %s (revision %s): its copies did not take it; checking them, "
                        "and loading it elsewhere if they are gone", model, revision)
        else:
            self.activations += 1
            log.info("request for cold model %s: loading on demand", model)
        return await self._ensure_ready(model, self._timeout_s, revision, failed_over)

    @contextlib.asynccontextmanager
    async def _activated(self, model: str, revision: str | None,
                         failed_over: bool) -> AsyncIterator[tuple[str | None, dict[str, str]]]:
        """The reason the model is not ready (None: replay), and a direct replay's extra headers;
        a direct replay is reported finished on the way out, whatever became of it."""
        reason = await self._activate(model, revision, failed_over)
        if not isinstance(reason, DirectCopy):
            yield reason, {}
            return
        self.direct_replays += 1
        try:
            yield None, reason.headers()
        finally:
            reason.finished()

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        m = _MODEL_PATH.match(request.path)
        if not m:
            return _json_error(404, f"no model in path {request.path}")
        model = request.headers.get(ACTIVATE_HEADER) or m.group(1)
        fallback = request.headers.get(FALLBACK_HEADER)
        if fallback is not None and not _NAME.match(fallback):
            return _json_error(400, f"bad {FALLBACK_HEADER} header")
        if request.headers.get(ACTIVATED_HEADER):
            return _json_error(503, _no_copy(model, fallback))
        async with self._activated(model, request.headers.get(REVISION_HEADER),
                                   fallback is not None) as (reason, direct):
            if reason is not None and reason.startswith(UNKNOWN_MODEL):
                return web.Response(status=404, content_type="application/json",
                                    text=json.dumps({"error": "model not found", "path": request.path}))
            if reason is not None:
                return _json_error(503, f"model '{model}' could not be made ready: {for_clients(reason)}")
            return await self._replay_rest(request, model, fallback, {**_forward_headers(request.headers),
                                                                      **direct})

    async def _replay_rest(self, request: web.Request, model: str, fallback: str | None,
                           headers: dict[str, str]) -> web.StreamResponse:
        body = await request.read()
        assert self._session is not None
        # a failed-over request was sent to the copy under the revision's id: replayed under the
        # name the client called, so the gateway routes it as the client's request
        path = request.path_qs if fallback is None else _MODEL_PATH.sub(f"/v2/models/{fallback}",
                                                                         request.path_qs)
        # the client's own headers only: no Content-Type of aiohttp's where the client sent none
        # (MLServer would read an octet-stream body as a string, not the V2 JSON it is)
        started = time.monotonic()
        try:
            async with self._session.request(request.method, f"{self._gateway_rest}{path}", data=body,
                                             headers=headers,
                                             skip_auto_headers=("Content-Type",)) as r:
                payload = await r.read()
                answer_headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP_BY_HOP}
                self._observe_replay(started, fallback is not None)
                return web.Response(status=r.status, body=payload, headers=answer_headers)
        except TimeoutError:
            return _json_error(504, f"model '{model}' was ready, but its request got no answer within "
                                    f"{self._timeout_s:g}s")
        except aiohttp.ClientError as e:
            return _json_error(502, f"model '{model}' was ready, but its request failed: "
                                    f"{for_clients(str(e))}")

    async def replay_grpc(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = tuple(context.invocation_metadata() or ())
        model = (next((v for k, v in metadata if k == ACTIVATE_HEADER), None)
                 or next((v for k, v in metadata if k == MODEL_HEADER), None))
        if model is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"missing {MODEL_HEADER} header")
        fallback = next((str(v) for k, v in metadata if k == FALLBACK_HEADER), None)
        if fallback is not None and not _NAME.match(fallback):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad {FALLBACK_HEADER} header")
        if any(k == ACTIVATED_HEADER for k, _ in metadata):
            await context.abort(grpc.StatusCode.UNAVAILABLE, _no_copy(str(model), fallback))
        revision = next((v for k, v in metadata if k == REVISION_HEADER), None)
        async with self._activated(str(model), revision, fallback is not None) as (reason, direct):
            if reason is not None and reason.startswith(UNKNOWN_MODEL):
                await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{model}' not found")
            if reason is not None:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"model '{model}' could not be made ready: {for_clients(reason)}")
            # (gRPC keeps its transport's headers, content-type, te, grpc-timeout and the
            # pseudo-headers, out of the metadata, and the replay's channel sends its own user-agent)
            forward = tuple((k, v) for k, v in metadata
                            if not k.startswith("x-envoy-") and k not in _NOT_FORWARDED)
            # routed by the name the client called (a transcoded REST request has none)
            if fallback is not None:
                forward = (*((k, v) for k, v in forward if k != MODEL_HEADER), (MODEL_HEADER, fallback))
            assert self._channel is not None
            call = self._channel.unary_unary(method)
            started = time.monotonic()
            try:
                answer = await call(request, metadata=(*forward, (ACTIVATED_HEADER, "1"), *direct.items()),
                                    timeout=self._timeout_s)
                self._observe_replay(started, fallback is not None)
                return answer
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "")
        raise AssertionError("unreachable")


def _no_copy(model: str, fallback: str | None) -> str:
    """The answer to a replay that came back: the routes still send it where it cannot be served."""
    if fallback is None:
        return f"model '{model}' has no ready copy"
    return f"model '{fallback}' has no copy that takes requests"


class _ReplayHandler(grpc.GenericRpcHandler):
    """Accepts any unary method as raw bytes, so the activator needs no knowledge of the protos."""

    def __init__(self, activator: Activator) -> None:
        self._activator = activator

    def service(self, handler_call_details):
        method = handler_call_details.method

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._activator.replay_grpc(method, request, context)

        return grpc.unary_unary_rpc_method_handler(handle)
