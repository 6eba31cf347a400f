"""Retries and outlier detection of the translated gateway in a real Envoy, one request at a time.

``test_killing_a_copy_mid_traffic_loses_no_request`` shows that a crash loses nothing, but there
outlier detection ejects the dead copy after two failures, so the retry policy is exercised only
by the few requests in flight at the kill. These tests isolate each mechanism with a copy that
keeps listening and keeps failing, and count what reached each copy.

Requests are sequential, so every copy has no request in flight when Envoy picks one and
LEAST_REQUEST picks uniformly among the candidates. The bounds below are computed for that.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import DATA_BODY, DATA_HEADERS, LAYOUTS, CopyBackend, StaticGateway, encode_model_name

from xds_server.mesh_view import ActivatorEndpoint, MeshView, Model, Revision

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

INFER = "/inference.GRPCInferenceService/ModelInfer"


def two_copies_and_a_neighbour(copies) -> MeshView:
    """m on c0 and c1; c2 holds another model of the runtime (shares the subset-layout cluster)."""
    c0, c1, c2 = copies
    return MeshView.of([
        Model("m", (Revision("m__1", copies=(c0.as_copy(), c1.as_copy())),)),
        Model("o", (Revision("o__1", copies=(c2.as_copy(),)),)),
    ])


async def host_stats(gw: StaticGateway) -> dict[int, dict[str, str]]:
    """Envoy admin ``/clusters``, per upstream port: ``rq_total``, ``health_flags``, …

    Host counters are not cluster stats, so the bootstrap's trimmed ``stats_matcher`` keeps them.
    A port is one copy's REST or gRPC port, so it names one host of one cluster.
    """
    out: dict[int, dict[str, str]] = {}
    for line in (await gw.envoy.get("/clusters")).splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0].startswith(("rt_", "rev_")) and parts[1].startswith("127.0.0.1:"):
            port = int(parts[1].rsplit(":", 1)[1])
            out.setdefault(port, {})[parts[2]] = parts[3]
    return out


class Client:
    """One kept-alive REST session and one gRPC channel to the gateway."""

    def __init__(self, gw: StaticGateway) -> None:
        self.gw = gw

    async def __aenter__(self) -> Client:
        self.session = aiohttp.ClientSession()
        self.channel = grpc.aio.insecure_channel(self.gw.grpc_target)
        self.infer = self.channel.unary_unary(INFER)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()
        await self.session.close()

    async def grpc(self, model: str = "m", timeout: float = 10) -> str:
        """The copy that answered, or the gRPC status name."""
        try:
            raw = await self.infer(encode_model_name(model), metadata=(("mm-vmodel-id", model),),
                                   timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return e.code().name
        return json.loads(raw)["copy"]

    async def rest(self, model: str = "m", timeout: float = 10) -> str:
        """The copy that answered, or the HTTP status (or "timeout")."""
        try:
            return await asyncio.wait_for(self._rest(model), timeout)
        except TimeoutError:
            return "timeout"

    async def _rest(self, model: str) -> str:
        async with self.session.post(f"{self.gw.rest_url}/v2/models/{model}/infer", data=DATA_BODY,
                                     headers=DATA_HEADERS) as r:
            if r.status != 200:
                return str(r.status)
            return (await r.json())["copy"]


def same_host_retries(ids: list[str]) -> int:
    """How many times the gateway sent one request (one x-request-id) to this copy again."""
    assert all(ids), "every upstream request carries the gateway's x-request-id"
    return sum(n - 1 for n in Counter(ids).values())


@pytest.mark.parametrize("kind", ["grpc", "rest"])
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_retry_goes_to_another_copy(tmp_path, copies, layout, kind):
    """c0 keeps listening and fails every request (gRPC UNAVAILABLE, REST connection reset).

    Outlier detection is switched off here (it would eject c0 after two failures and hide the
    retry policy). With two retries and ``previous_hosts``, a request whose first try hit c0 is
    retried on c1; Envoy re-picks a host at most ``host_selection_retry_max_attempts`` = 5 more
    times when the pick was tried before, so a retry returns to c0 with probability
    (1/2)^6 = 1/64, and a request fails (c0 three times) with 1/2 · 1/64 · 1/64 = 1/8192.
    Without the predicate (or without the re-picks), each retry is a coin flip: a request fails
    with 1/8, and a same-host retry happens 1/4 + 1/8 = 0.375 times per request.

    N = 200 requests. Real policy: expected failures 0.024, P(>= 3) < 3e-6; same-host retries
    ~ Poisson(1.6), P(> 10) < 1e-6. Without the predicate: failures ~ Binomial(200, 1/8)
    (mean 25), P(<= 2) < 1e-9; same-host retries mean 75.
    """
    c0, c1, c2 = copies
    c0.grpc.fail = grpc.StatusCode.UNAVAILABLE
    c0.rest.fail = "reset"
    bad, good = (c0.grpc, c1.grpc) if kind == "grpc" else (c0.rest, c1.rest)
    gw = await StaticGateway(tmp_path, two_copies_and_a_neighbour(copies), **layout,
                             outlier_consecutive_gateway_failure=1_000_000).start()
    n = 200
    try:
        async with Client(gw) as client:
            call = client.grpc if kind == "grpc" else client.rest
            answers = Counter([await call() for _ in range(n)])
        stats = await host_stats(gw)
    finally:
        await gw.stop()
    again = same_host_retries(bad.request_ids)
    detail = (answers, f"c0 tries={bad.requests} same-host retries={again}", f"c1={good.requests}")
    assert set(answers) <= {"c1", "UNAVAILABLE", "503"}, detail
    assert answers["c1"] >= n - 2, detail
    assert again <= 10, detail
    # about half the first tries hit c0 (mean 100, sd 7) and every one of those was retried on c1
    assert 60 <= len(set(bad.request_ids)) <= 140, detail
    retried_elsewhere = set(bad.request_ids) & set(good.request_ids)
    assert len(retried_elsewhere) >= len(set(bad.request_ids)) - 2, detail
    # Envoy's own per-host counters agree with what the copies saw; c0 was never ejected
    assert int(stats[bad.port]["rq_total"]) == bad.requests, (detail, stats[bad.port])
    assert int(stats[good.port]["rq_total"]) == good.requests, (detail, stats[good.port])
    assert stats[bad.port]["health_flags"] == "healthy", (detail, stats[bad.port])
    assert c2.grpc.requests == c2.rest.requests == 0


async def wait_for_flag(gw: StaticGateway, port: int, flag: str, timeout: float = 5.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        stats = (await host_stats(gw))[port]
        if flag in stats.get("health_flags", "") or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["grpc", "rest"])
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_copy_failing_at_the_gateway_level_is_ejected_and_gets_no_more_requests(
        tmp_path, copies, layout, kind):
    """c0 answers gRPC UNAVAILABLE / REST 503 (502/503/504 and connection errors are "gateway
    failures"); after 2 in a row outlier detection ejects it: Envoy's ``/clusters`` flags it
    ``failed_outlier_check`` and the next 100 requests all reach c1. (The ejection lasts 30 s
    here instead of the default 10 s, so a slow machine cannot see c0 come back mid-test.)"""
    c0, c1, c2 = copies
    c0.grpc.fail = grpc.StatusCode.UNAVAILABLE
    c0.rest.fail = 503
    bad, good = (c0.grpc, c1.grpc) if kind == "grpc" else (c0.rest, c1.rest)
    gw = await StaticGateway(tmp_path, two_copies_and_a_neighbour(copies), **layout,
                             outlier_base_ejection_s=30).start()
    try:
        async with Client(gw) as client:
            call = client.grpc if kind == "grpc" else client.rest
            # until c0 has failed twice (P(c0 picked < 2 times in 60) < 1e-16)
            before = Counter()
            for _ in range(60):
                if bad.requests >= 2:
                    break
                before[await call()] += 1
            t0 = time.monotonic()
            assert bad.requests >= 2, before
            stats = await wait_for_flag(gw, bad.port, "failed_outlier_check")
            assert "failed_outlier_check" in stats["health_flags"], (stats["health_flags"], before, stats)
            seen, good_before = bad.requests, good.requests
            after = Counter([await call() for _ in range(100)])
            # the ejection had not ended while we sent (a re-admitted c0 would be fair game)
            assert time.monotonic() - t0 < 25
            assert after == {"c1": 100}, (after, before)
            assert bad.requests == seen, (bad.requests, seen)
            assert good.requests == good_before + 100
            if kind == "rest":
                # retry_on has no 5xx / gateway-error, so a REST 503 is not retried: the
                # failures before the ejection reach the client, and nothing else does
                assert set(before) <= {"c1", "503"} and before["503"] == seen, before
            else:
                # UNAVAILABLE is retried on c1 (a retry returns to c0 with 1/64: then c0 has
                # failed twice within one request, which is retried once more)
                assert set(before) <= {"c1"}, before
    finally:
        await gw.stop()
    assert c2.grpc.requests == c2.rest.requests == 0


@pytest.mark.parametrize("kind", ["grpc", "rest"])
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_copy_answering_500_is_not_ejected(tmp_path, copies, layout, kind):
    """A 500 (gRPC INTERNAL) is a model's answer to a bad input: a shared runtime that gives it
    must stay in rotation. c0 answers every request with it; after 12 of them in a row (Envoy's
    default consecutive_5xx ejection is at 5) it is still healthy and still gets requests."""
    c0, c1, _ = copies
    c0.grpc.fail = grpc.StatusCode.INTERNAL
    c0.rest.fail = 500
    bad, good, error = (c0.grpc, c1.grpc, "INTERNAL") if kind == "grpc" else (c0.rest, c1.rest, "500")
    gw = await StaticGateway(tmp_path, two_copies_and_a_neighbour(copies), **layout).start()
    try:
        async with Client(gw) as client:
            call = client.grpc if kind == "grpc" else client.rest
            answers = Counter()
            # c0 is picked half the time: P(it gets < 12 of 200) < 1e-40
            for _ in range(200):
                if bad.requests >= 12:
                    break
                answers[await call()] += 1
            stats = (await host_stats(gw))[bad.port]
    finally:
        await gw.stop()
    assert bad.requests >= 12, (answers, stats)
    assert answers[error] == bad.requests and set(answers) == {"c1", error}, answers
    assert answers["c1"] == good.requests, answers
    assert stats["health_flags"] == "healthy", (stats["health_flags"], answers, stats)


@pytest.mark.parametrize("kind", ["grpc", "rest"])
async def test_a_copy_that_hangs_is_timed_out_per_try_and_retried_elsewhere(tmp_path, copies, kind):
    """With ``per_try_timeout_s``, a try that gets no answer is abandoned and retried on the
    other copy; the client sees an answer from c1 after about the per-try timeout. (Ejection off,
    so every request picks afresh; the route's own timeout is 60 s, the client's 5 s.)"""
    c0, c1, _ = copies
    c0.grpc.fail = c0.rest.fail = "hang"
    bad, good = (c0.grpc, c1.grpc) if kind == "grpc" else (c0.rest, c1.rest)
    gw = await StaticGateway(tmp_path, two_copies_and_a_neighbour(copies), per_try_timeout_s=0.3,
                             outlier_consecutive_gateway_failure=1_000_000).start()
    try:
        async with Client(gw) as client:
            call = client.grpc if kind == "grpc" else client.rest
            answers = Counter()
            # until c0 has hung 3 times (P(not within 40) < 1e-9)
            for _ in range(40):
                if bad.requests >= 3 or set(answers) - {"c1"}:
                    break
                answers[await call(timeout=5)] += 1
    finally:
        await gw.stop()
    assert bad.requests >= 3, answers
    assert answers == {"c1": sum(answers.values())}, answers
    # every request that hung on c0 was answered by c1
    assert set(bad.request_ids) <= set(good.request_ids), (bad.request_ids, good.request_ids)


def activator_at(backend: CopyBackend) -> ActivatorEndpoint:
    return ActivatorEndpoint("127.0.0.1", backend.rest.port, backend.grpc.port)


@pytest.mark.parametrize("kind", ["grpc", "rest"])
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_request_whose_only_copy_is_gone_goes_on_to_the_activator(tmp_path, copies, layout, kind):
    """m's one copy (c0) is killed (nothing listens, as after ``kill -9``). The route's cluster is
    the fallback aggregate (copies, then the activator; c1 plays the activator): the retries leave
    the copies' priority after two tries, so every request reaches the activator as it was sent to
    the copy (under the revision's id) and says where it was going. o, on c2 (in the subset layout
    the same runtime cluster), is still served by c2. Without the fallback every request fails."""
    c0, act, c2 = copies
    view = MeshView.of([Model("m", (Revision("m__1", copies=(c0.as_copy(),)),)),
                        Model("o", (Revision("o__1", copies=(c2.as_copy(),)),))], activator=activator_at(act))
    gw = await StaticGateway(tmp_path, view, **layout).start()
    try:
        await c0.kill()
        async with Client(gw) as client:
            call = client.grpc if kind == "grpc" else client.rest
            answers = Counter([await call() for _ in range(20)])
            neighbour = Counter([await call("o") for _ in range(10)])
    finally:
        await gw.stop()
    assert answers == {"c1": 20}, answers
    assert neighbour == {"c2": 10}, neighbour
    where = {"x-msm-fallback": "m", "x-msm-model": "m", "x-msm-revision": "m__1"}
    if kind == "rest":
        assert act.rest.requests == 20 and act.grpc.requests == 0
        for seen in act.rest.seen:
            assert seen["path"] == "/v2/models/m__1/infer"
            assert {k: v for k, v in seen["headers"].items() if k.startswith("x-msm-")} == where, seen
    else:
        assert act.grpc.requests == 20 and act.rest.requests == 0
        for seen in act.grpc.seen:
            assert (seen["model_name"], seen["vmodel"], seen["msm"]) == ("m__1", "m", where), seen


@pytest.mark.parametrize("kind", ["grpc", "rest"])
@pytest.mark.parametrize("layout", LAYOUTS)
async def test_with_one_of_two_copies_gone_the_other_takes_every_request_and_the_activator_none(
        tmp_path, copies, layout, kind):
    """c0 of m's two copies is killed. Its failures are retried on c1, then outlier detection
    ejects it; the copies' priority stays whole (its overprovisioning factor), so none of the 100
    requests spills over to the activator's (Envoy's default factor, 1.4, would send 30 % of them
    there once c0 is ejected)."""
    act = await CopyBackend("act").start()
    try:
        view = two_copies_and_a_neighbour(copies)
        view = MeshView.of(list(view.models.values()), activator=activator_at(act))
        gw = await StaticGateway(tmp_path, view, **layout).start()
        try:
            await copies[0].kill()
            async with Client(gw) as client:
                call = client.grpc if kind == "grpc" else client.rest
                answers = Counter([await call() for _ in range(100)])
        finally:
            await gw.stop()
    finally:
        await act.stop()
    assert answers == {"c1": 100}, answers
    assert act.rest.requests == act.grpc.requests == 0
