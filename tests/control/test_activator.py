"""The activator against real loopback servers standing in for the gateway."""

import asyncio
import base64
import contextlib
import gzip
import json
import socket

import aiohttp
import grpc
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from placement.control.activator import Activator, DirectCopy
from placement.local.ports import free_port
from xds_server.translate.names import ACTIVATED_HEADER, COPY_HEADER, REPLAY_TOKEN_HEADER

FALLBACK = {"x-msm-model": "svm", "x-msm-revision": "svm__isvc-1", "x-msm-fallback": "digits"}


class FakeGateway:
    """Records what the activator replays to it (REST and gRPC)."""

    def __init__(self):
        self.rest_seen: list[tuple[str, str, dict, bytes]] = []
        self.grpc_seen: list[tuple[str, dict, bytes]] = []

    async def start(self):
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._rest)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.rest_port = site._server.sockets[0].getsockname()[1]
        self.grpc = grpc.aio.server(options=[("grpc.max_receive_message_length", -1),
                                             ("grpc.max_send_message_length", -1)])
        gw = self

        class Echo(grpc.GenericRpcHandler):
            def service(self, details):
                async def handle(request, context):
                    gw.grpc_seen.append((details.method, dict(context.invocation_metadata()), request))
                    if dict(context.invocation_metadata()).get("x-hang"):
                        await asyncio.sleep(3)
                    return b"served:" + request
                return grpc.unary_unary_rpc_method_handler(handle)

        self.grpc.add_generic_rpc_handlers((Echo(),))
        self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        await self.grpc.start()

    async def stop(self):
        await self.grpc.stop(0)
        await self.runner.cleanup()

    async def _rest(self, request):
        body = await request.read()
        self.rest_seen.append((request.method, request.path_qs, dict(request.headers), body))
        if "hang" in request.path:
            await asyncio.sleep(3)
        if "status" in request.query:
            return web.json_response({"served": request.path}, status=int(request.query["status"]),
                                     headers={"Keep-Alive": "timeout=5", "X-Served": "yes"})
        if "gzip" in request.headers.get("accept-encoding", ""):  # as MLServer's middleware does
            payload = gzip.compress(json.dumps({"served": request.path}).encode())
            return web.Response(body=payload, headers={"content-encoding": "gzip",
                                                       "content-type": "application/json"})
        return web.json_response({"served": request.path}, status=200)


@pytest.fixture
async def gateway():
    gw = FakeGateway()
    await gw.start()
    yield gw
    await gw.stop()


class Calls(list):
    """ensure_ready's calls; ``timeouts`` the timeout of each."""

    def __init__(self):
        super().__init__()
        self.timeouts = []


def make_activator(gateway, answers, timeout_s=5):
    calls = Calls()

    async def ensure_ready(model, timeout, revision=None, failed_over=False):
        calls.timeouts.append(timeout)
        call = model if revision is None else (model, revision)
        calls.append((*call, "failed over") if failed_over else call)
        return answers.get(model)

    act = Activator(ensure_ready, "127.0.0.1", gateway.rest_port, gateway.grpc_port, timeout_s=timeout_s)
    return act, calls


@contextlib.asynccontextmanager
async def started(gateway, answers, timeout_s=5):
    """A started activator (see make_activator) and its ensure_ready calls; stopped on the way out."""
    act, calls = make_activator(gateway, answers, timeout_s)
    await act.start()
    try:
        yield act, calls
    finally:
        await act.stop()


async def test_cold_rest_request_is_loaded_then_replayed_through_the_gateway(gateway):
    async with started(gateway, {}) as (act, calls):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/sklearn-mnist/infer?x=1",
                data=b'{"inputs": []}') as r:
            assert r.status == 200
            assert await r.json() == {"served": "/v2/models/sklearn-mnist/infer"}
        assert calls == ["sklearn-mnist"]
        method, path, headers, body = gateway.rest_seen[0]
        assert (method, path, body) == ("POST", "/v2/models/sklearn-mnist/infer?x=1", b'{"inputs": []}')
        assert headers[ACTIVATED_HEADER] == "1"


async def test_replays_are_timed_by_kind_and_refusals_are_not(gateway):
    registry = CollectorRegistry()

    async def ensure_ready(model, timeout, revision=None, failed_over=False):
        return "no runtime supports format foo" if model == "bad" else None

    act = Activator(ensure_ready, "127.0.0.1", gateway.rest_port, gateway.grpc_port, timeout_s=5,
                    registry=registry)
    await act.start()
    try:
        async with aiohttp.ClientSession() as s:
            for path, headers in (("m", {}), ("bad", {}), ("svm__isvc-1", FALLBACK)):
                async with s.post(f"http://127.0.0.1:{act.rest_port}/v2/models/{path}/infer", data=b"{}",
                                  headers=headers) as r:
                    await r.read()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            await call(b"\x0a\x01m", metadata=(("mm-vmodel-id", "m"),), timeout=5)
    finally:
        await act.stop()

    def count(kind):
        return registry.get_sample_value("msm_activator_replay_seconds_count", {"kind": kind})

    assert (count("cold"), count("failover")) == (2, 1)  # the refused request replayed nothing
    assert registry.get_sample_value("msm_activator_replay_seconds_sum", {"kind": "cold"}) > 0


async def test_the_gateway_names_the_model_to_load_and_the_replay_keeps_the_revision(gateway):
    """A VirtualService host ``digits`` routed to ``svm``'s cold revision: the activator loads
    ``svm`` (that revision), and replays the request as the client sent it, revision pinned."""
    async with started(gateway, {}) as (act, calls):
        pin = {"x-msm-model": "svm", "x-msm-revision": "svm__isvc-1"}
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/digits/infer", data=b"{}", headers=pin) as r:
            assert r.status == 200
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            await call(b"\x0a\x01m", metadata=(("mm-vmodel-id", "digits"), *pin.items()), timeout=5)
        assert calls == [("svm", "svm__isvc-1")] * 2
        _, path, headers, _ = gateway.rest_seen[0]
        assert path == "/v2/models/digits/infer"
        assert "x-msm-model" not in headers and headers["x-msm-revision"] == "svm__isvc-1"
        _, md, _ = gateway.grpc_seen[0]
        assert md["mm-vmodel-id"] == "digits" and "x-msm-model" not in md
        assert md["x-msm-revision"] == "svm__isvc-1" and md[ACTIVATED_HEADER] == "1"


async def test_a_model_deleted_while_routes_still_name_it_is_not_found(gateway):
    """The gateway's routes lag the deletion by an ACK: the activator answers as the gateway will."""
    async with started(gateway, {"gone": "unknown model 'gone'"}) as (act, _):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/gone/infer", data=b"{}") as r:
            assert r.status == 404
            assert await r.json() == {"error": "model not found", "path": "/v2/models/gone/infer"}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"\x0a\x04gone", metadata=(("mm-vmodel-id", "gone"),), timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert gateway.rest_seen == [] and gateway.grpc_seen == []


async def test_a_replayed_request_that_comes_back_is_answered_503_not_looped(gateway):
    async with started(gateway, {}) as (act, calls):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=b"{}",
                headers={ACTIVATED_HEADER: "1"}) as r:
            assert r.status == 503
            assert "no ready copy" in json.loads(await r.text())["error"]
        assert calls == [] and gateway.rest_seen == []


async def test_a_model_that_cannot_load_gets_503_with_the_reason(gateway):
    async with started(gateway, {"broken": "load failed on 3 instances: bad pickle"}) as (act, _):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/broken/infer", data=b"{}") as r:
            assert r.status == 503
            assert r.headers["content-type"].startswith("application/json")
            assert "bad pickle" in (await r.json())["error"]
        assert gateway.rest_seen == []


async def test_cold_grpc_request_is_replayed_with_its_metadata(gateway):
    async with started(gateway, {}) as (act, calls):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            reply = await call(b"\x0a\x01m", metadata=(("mm-vmodel-id", "m"), ("x-user", "u1")), timeout=5)
        assert reply == b"served:\x0a\x01m"
        assert calls == ["m"]
        method, md, body = gateway.grpc_seen[0]
        assert body == b"\x0a\x01m"
        assert method == "/inference.GRPCInferenceService/ModelInfer"
        assert md["mm-vmodel-id"] == "m" and md["x-user"] == "u1" and md[ACTIVATED_HEADER] == "1"


async def test_grpc_without_model_header_is_invalid_and_failed_load_is_unavailable(gateway):
    async with started(gateway, {"bad": "no runtime supports format foo"}) as (act, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"", timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"", metadata=(("mm-vmodel-id", "bad"),), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no runtime supports format foo" in e.value.details()
        assert gateway.grpc_seen == []


async def test_a_replayed_grpc_request_that_comes_back_is_unavailable_not_looped(gateway):
    async with started(gateway, {}) as (act, calls):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"\x0a\x01m", metadata=(("mm-vmodel-id", "m"), (ACTIVATED_HEADER, "1")), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "model 'm' has no ready copy"
        assert calls == [] and gateway.grpc_seen == []


async def test_grpc_replay_that_routes_back_to_the_activator_stops_after_one_activation(gateway):
    """The gateway still routes the model to the activator: the replay comes straight back.

    The activator's gRPC "gateway" is its own gRPC port. The first pass loads and replays with
    ``x-msm-activated``; the second pass must refuse it. Without the guard every pass loads and
    replays again; ensure_ready gives up after 10 calls, so a loop ends quickly with another error.
    """
    port = free_port()
    calls = []

    async def ensure_ready(model, timeout, revision=None, failed_over=False):
        calls.append(model)
        return "looped" if len(calls) >= 10 else None

    act = Activator(ensure_ready, "127.0.0.1", gateway.rest_port, port, timeout_s=10)
    await act.start(grpc_port=port)
    try:
        assert act.grpc_port == port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"\x0a\x01m", metadata=(("mm-vmodel-id", "m"),), timeout=8)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "model 'm' has no ready copy"
        assert calls == ["m"]
        assert act.activations == 1 and gateway.grpc_seen == []
    finally:
        await act.stop()


async def test_a_failure_told_to_the_client_names_no_internal_address(gateway):
    reason = "loadModel on 127.0.0.1:20240 failed (INTERNAL): bad pickle; peer [::1]:8001"
    async with started(gateway, {"m": reason}) as (act, _):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=b"{}") as r:
            assert r.status == 503
            error = (await r.json())["error"]
        assert error == ("model 'm' could not be made ready: loadModel on <internal> failed (INTERNAL): "
                         "bad pickle; peer <internal>")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                    b"", metadata=(("mm-vmodel-id", "m"),), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "127.0.0.1" not in e.value.details() and "<internal>" in e.value.details()




async def test_a_request_whose_copies_failed_waits_failed_over_and_replays_under_the_clients_name(gateway):
    """The gateway's retries gave up on the copies and sent the request here as it went to them
    (under the revision's id): the activator asks for a failed-over wait, then replays it as the
    client's request, the revision pinned."""
    async with started(gateway, {}) as (act, calls):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/svm__isvc-1/versions/2/infer?x=1", data=b"{}",
                headers=FALLBACK) as r:
            assert r.status == 200
        # a REST request the gateway transcoded has no mm-vmodel-id: the replay names the model
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            await call(b"\x0a\x0bsvm__isvc-1", metadata=tuple(FALLBACK.items()), timeout=5)
        assert calls == [("svm", "svm__isvc-1", "failed over")] * 2
        assert (act.failovers, act.activations) == (2, 0)
        _, path, headers, _ = gateway.rest_seen[0]
        assert path == "/v2/models/digits/versions/2/infer?x=1"
        assert headers["x-msm-revision"] == "svm__isvc-1" and headers[ACTIVATED_HEADER] == "1"
        assert "x-msm-fallback" not in headers and "x-msm-model" not in headers
        _, md, body = gateway.grpc_seen[0]
        assert body == b"\x0a\x0bsvm__isvc-1"
        assert md["mm-vmodel-id"] == "digits" and md["x-msm-revision"] == "svm__isvc-1"
        assert "x-msm-fallback" not in md and "x-msm-model" not in md


async def test_a_failed_over_grpc_request_is_replayed_under_the_name_the_client_called(gateway):
    async with started(gateway, {}) as (act, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            await call(b"\x0a\x01m", metadata=(("mm-vmodel-id", "svm"), *FALLBACK.items()), timeout=5)
        _, md, _ = gateway.grpc_seen[0]
        assert md["mm-vmodel-id"] == "digits"


async def test_a_failed_over_request_that_comes_back_says_no_copy_takes_it(gateway):
    async with started(gateway, {}) as (act, calls):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/svm__isvc-1/infer", data=b"{}",
                headers={**FALLBACK, ACTIVATED_HEADER: "1"}) as r:
            assert r.status == 503
            assert (await r.json())["error"] == "model 'digits' has no copy that takes requests"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"\x0a\x01m", metadata=(*FALLBACK.items(), (ACTIVATED_HEADER, "1")), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert e.value.details() == "model 'digits' has no copy that takes requests"
        assert calls == [] and gateway.rest_seen == [] and gateway.grpc_seen == []


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 300, "a b"])
async def test_a_fallback_header_that_is_not_a_model_name_is_refused(gateway, bad):
    async with started(gateway, {}) as (act, calls):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=b"{}",
                headers={"x-msm-fallback": bad}) as r:
            assert r.status == 400
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call(b"", metadata=(("mm-vmodel-id", "m"), ("x-msm-fallback", bad)), timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert calls == [] and gateway.rest_seen == [] and gateway.grpc_seen == []


async def test_a_replayed_answer_reaches_the_client_in_the_encoding_it_names(gateway):
    """The client accepts gzip and the runtime gzips its answer: the replay passes the body on
    as it came, so its Content-Encoding still describes it (seen live: an httpx client failed to
    decode a body the activator had decompressed but still labelled gzip)."""
    async with started(gateway, {}) as (act, _):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=b"{}",
                headers={"accept-encoding": "gzip"}) as r:
            assert r.status == 200 and r.headers["content-encoding"] == "gzip"
            assert await r.json() == {"served": "/v2/models/m/infer"}


async def test_the_replay_carries_the_clients_content_type_and_none_of_its_own(gateway):
    """A V2 body sent without a Content-Type (as curl -d or httpx content= may) is replayed
    without one: a replay labelled application/octet-stream is read by MLServer as a string."""
    async with started(gateway, {}) as (act, _):
        async with aiohttp.ClientSession() as s:
            for sent in (None, "application/json"):
                async with s.post(f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=b"{}",
                                  headers={"Content-Type": sent} if sent else {},
                                  skip_auto_headers=("Content-Type",)) as r:
                    assert r.status == 200
        assert [h.get("Content-Type") for _, _, h, _ in gateway.rest_seen] == [None, "application/json"]


def refused(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


async def test_the_activator_listens_on_its_host_only_and_stop_closes_everything(gateway):
    """Started on 127.0.0.1, another loopback address finds nothing (it must not listen on every
    interface: it replays anything it is sent); stopped, nothing listens. Stopping an activator
    that never started is harmless."""
    await make_activator(gateway, {})[0].stop()
    act, _ = make_activator(gateway, {})
    await act.start("127.0.0.1")
    try:
        for port in (act.rest_port, act.grpc_port):
            assert not refused("127.0.0.1", port)
            assert refused("127.0.0.2", port)
    finally:
        await act.stop()
    assert refused("127.0.0.1", act.rest_port) and refused("127.0.0.1", act.grpc_port)


async def test_replays_carry_no_gateway_internal_headers_and_large_bodies_whole(gateway):
    """``x-envoy-*`` headers a request came with are not replayed (the gateway would take them as
    its own instructions), nor is the client's gRPC user-agent; bodies larger than aiohttp's and
    gRPC's default limits (1 MiB, 4 MiB) are replayed whole, and a gRPC answer above 4 MiB comes
    back whole (the gateway bounds sizes; a model's output may be large)."""
    big = b"x" * (2 << 20)
    huge = b"\x0a\x01m" + b"y" * (5 << 20)
    async with started(gateway, {}) as (act, calls):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=big,
                headers={"x-envoy-retry-on": "5xx", "x-user": "u1"}) as r:
            assert r.status == 200
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}",
                                             options=[("grpc.primary_user_agent", "client-ua/1"),
                                                      ("grpc.max_send_message_length", -1),
                                                      ("grpc.max_receive_message_length", -1)]) as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            reply = await call(huge, metadata=(("mm-vmodel-id", "m"), ("x-envoy-max-retries", "9")),
                               timeout=20)
        assert reply == b"served:" + huge
        _, _, headers, body = gateway.rest_seen[0]
        assert body == big and headers["x-user"] == "u1" and "x-envoy-retry-on" not in headers
        _, md, _ = gateway.grpc_seen[0]
        assert "x-envoy-max-retries" not in md and "client-ua/1" not in md.get("user-agent", "")
        assert calls.timeouts == [5, 5] and act.activations == 2


async def test_a_replay_answer_keeps_its_status_and_headers_but_not_hop_by_hop_ones(gateway):
    async with started(gateway, {}) as (act, _):
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer?status=422", data=b"{}") as r:
            assert r.status == 422
            assert r.headers["X-Served"] == "yes" and "Keep-Alive" not in r.headers


async def test_a_replay_without_an_answer_in_time_or_at_all_gets_a_clear_error(gateway):
    """The gateway does not answer the replay within the activator's timeout: 504 (gRPC
    DEADLINE_EXCEEDED) with what happened, not a 500; the gateway gone: 502."""
    async with started(gateway, {}, timeout_s=0.5) as (act, _):
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{act.rest_port}/v2/models/hang/infer", data=b"{}") as r:
                assert r.status == 504
                assert (await r.json())["error"] == ("model 'hang' was ready, but its request got no answer "
                                                     "within 0.5s")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
                call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call(b"", metadata=(("mm-vmodel-id", "m"), ("x-hang", "1")), timeout=10)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await gateway.runner.cleanup()  # the gateway's REST port closes
            async with s.post(f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=b"{}") as r:
                assert r.status == 502
                error = (await r.json())["error"]
                assert error.startswith("model 'm' was ready, but its request failed: Cannot connect to host")
                assert "127.0.0.1" not in error and "<internal>" in error


async def test_every_refusal_says_what_was_wrong(gateway):
    async with started(gateway, {"gone": "unknown model 'gone'"}) as (act, _):
        url = f"http://127.0.0.1:{act.rest_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/v1/other") as r:
                assert (r.status, await r.json()) == (404, {"error": "no model in path /v1/other"})
            async with s.post(f"{url}/v2/models/m/infer", headers={"x-msm-fallback": "a/b"}) as r:
                assert (r.status, await r.json()) == (400, {"error": "bad x-msm-fallback header"})
            async with s.post(f"{url}/v2/models/m/infer", headers={ACTIVATED_HEADER: "1"}) as r:
                assert (r.status, await r.json()) == (503, {"error": "model 'm' has no ready copy"})
            async with s.post(f"{url}/v2/models/gone/infer") as r:
                assert r.status == 404 and r.headers["content-type"] == "application/json; charset=utf-8"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            for md, details in (((), "missing mm-vmodel-id header"),
                                ((("mm-vmodel-id", "m"), ("x-msm-fallback", "a/b")),
                                 "bad x-msm-fallback header"),
                                ((("mm-vmodel-id", "gone"),), "model 'gone' not found")):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call(b"", metadata=md, timeout=5)
                assert e.value.details() == details


DIRECT = DirectCopy("tok", "10.0.0.2:8080", "10.0.0.2:8081")
SPOOFED = {"x-msm-replay-token": "guess", "x-msm-copy-rest": "MTAuMC4wLjk6MQ==", "x-msm-copy-grpc": "eA=="}


def test_a_direct_replay_names_its_copy_as_envoys_header_session_state_reads_it():
    assert DIRECT.headers() == {
        REPLAY_TOKEN_HEADER: "tok",
        COPY_HEADER["rest"]: base64.b64encode(b"10.0.0.2:8080").decode(),
        COPY_HEADER["grpc"]: base64.b64encode(b"10.0.0.2:8081").decode()}


async def test_a_direct_replay_carries_the_token_and_the_copy_and_never_a_clients(gateway):
    """Released with a DirectCopy, the replay carries its token and the copy's addresses (the
    gateway's direct route); a client's own such headers are never passed on, on either path."""
    async with started(gateway, {"m": DIRECT}) as (act, _):
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=b"{}",
                              headers={**SPOOFED, "x-msm-revision": "m__1"}) as r:
                assert r.status == 200
            async with s.post(f"http://127.0.0.1:{act.rest_port}/v2/models/w/infer", data=b"{}",
                              headers=SPOOFED) as r:
                assert r.status == 200
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            await call(b"", metadata=(("mm-vmodel-id", "m"), *SPOOFED.items()), timeout=5)
            await call(b"", metadata=(("mm-vmodel-id", "w"), *SPOOFED.items()), timeout=5)
        assert act.direct_replays == 2
    direct_rest, routed_rest = (h for _, _, h, _ in gateway.rest_seen)
    direct_grpc, routed_grpc = (md for _, md, _ in gateway.grpc_seen)
    for direct in (direct_rest, direct_grpc):
        assert {k.lower(): v for k, v in direct.items() if k.lower() in DIRECT.headers()} == DIRECT.headers()
        assert direct.get(ACTIVATED_HEADER) == "1"
    for routed in (routed_rest, routed_grpc):
        assert not {k.lower() for k in routed} & set(SPOOFED)
        assert routed.get(ACTIVATED_HEADER) == "1"


async def test_a_direct_replay_reports_its_end_once_answered_or_failed(gateway):
    ended: list[str] = []
    copy = DirectCopy("tok", "10.0.0.2:8080", "10.0.0.2:8081", done=lambda: ended.append("done"))
    async with started(gateway, {"m": copy}, timeout_s=1) as (act, _):
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{act.rest_port}/v2/models/m/infer", data=b"{}") as r:
                assert r.status == 200
            assert ended == ["done"]
            # the gateway hangs past the activator's timeout: 504, and still reported
            async with s.post(f"http://127.0.0.1:{act.rest_port}/v2/models/m/hang", data=b"{}") as r:
                assert r.status == 504
            assert ended == ["done"] * 2
        async with grpc.aio.insecure_channel(f"127.0.0.1:{act.grpc_port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            await call(b"", metadata=(("mm-vmodel-id", "m"),), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await call(b"", metadata=(("mm-vmodel-id", "m"), ("x-hang", "1")), timeout=5)
        assert ended == ["done"] * 4
