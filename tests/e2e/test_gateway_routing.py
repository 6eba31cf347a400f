"""The translated gateway in a real Envoy, loaded from a static bootstrap and from msm's xDS server.

Backends on loopback answer which copy served a request and under which model name.
"""

from __future__ import annotations

import asyncio
import base64
import math
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import DATA_BODY, DATA_HEADERS, LAYOUTS, RestBackend, StaticGateway, first_seen, grpc_infer

from xds_server.mesh_view import (
    ActivatorEndpoint,
    Destination,
    HeaderMatch,
    MeshView,
    Mirror,
    Model,
    Revision,
    RouteRule,
)
from xds_server.translate.routes import sticky_bucket

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]



@pytest.fixture(params=["static", "ads"])
def source(request) -> str:
    """Each test runs twice: Envoy from a static bootstrap, and Envoy configured by msm over ADS."""
    return request.param


async def gateway(tmp_path: Path, view: MeshView, source: str, **options) -> StaticGateway:
    return await StaticGateway(tmp_path, view, source=source, **options).start()


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_routes_by_path_and_header_to_the_revision_id(tmp_path, copies, layout, source):
    c0, c1, _ = copies
    view = MeshView.of([
        Model("a", (Revision("a__isvc-1", copies=(c0.as_copy(),)),)),
        Model("b", (Revision("b__isvc-1", copies=(c1.as_copy(),)),)),
    ])
    gw = await gateway(tmp_path, view, source, **layout)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{gw.rest_url}/v2/models/a/ready") as r:
                assert r.status == 200
                got = await r.json()
            assert (got["copy"], got["path"]) == ("c0", "/v2/models/a__isvc-1/ready")
            async with s.get(f"{gw.rest_url}/v2/models/b") as r:  # model metadata
                got = await r.json()
            assert (got["copy"], got["path"]) == ("c1", "/v2/models/b__isvc-1")
            async with s.post(f"{gw.rest_url}/v2/models/b/versions/7/infer", data=DATA_BODY,
                              headers=DATA_HEADERS) as r:
                got = await r.json()
            assert (got["copy"], got["path"]) == ("c1", "/v2/models/b__isvc-1/versions/7/infer")
            assert "x-msm-body" not in got["headers"]
        code, got = await grpc_infer(gw.grpc_target, "b")
        assert code == grpc.StatusCode.OK
        assert (got["copy"], got["vmodel"]) == ("c1", "b")
        assert got["model_name"] == "b__isvc-1"  # the data path's Lua filter rewrote the body's name
        code, got = await grpc_infer(gw.grpc_target, "a")
        assert got["copy"] == "c0"
    finally:
        await gw.stop()


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_unknown_model_is_404_json_and_grpc_not_found(tmp_path, copies, layout, source):
    c0, _, _ = copies
    view = MeshView.of([
        Model("a", (Revision("a__isvc-1", copies=(c0.as_copy(),)),)),
        Model("gone", (Revision("gone__isvc-1"),)),
    ])
    gw = await gateway(tmp_path, view, source, **layout)
    try:
        async with aiohttp.ClientSession() as s:
            for path in ("/v2/models/nope/infer", "/v2/models/ab/ready", "/v2/models/a-b"):
                async with s.post(f"{gw.rest_url}{path}", data=DATA_BODY) as r:
                    assert r.status == 404, path
                    assert r.headers["content-type"].startswith("application/json")
                    body = await r.json()
                assert body == {"error": "model not found", "path": path}
            async with s.post(f"{gw.rest_url}/other", data=DATA_BODY) as r:  # not an inference path
                assert r.status == 403
                assert (await r.json())["error"].startswith("only inference is served here")
            async with s.post(f"{gw.rest_url}/v2/models/gone/infer", data=DATA_BODY,
                              headers=DATA_HEADERS) as r:
                assert r.status == 503
                body = await r.json()
            assert body == {"error": "no ready copy of revision 'gone__isvc-1' of model 'gone'"}
        code, _ = await grpc_infer(gw.grpc_target, "nope")
        assert code == grpc.StatusCode.NOT_FOUND
        code, details = await grpc_infer(gw.grpc_target, "gone")
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "no ready copy" in details
        assert c0.rest.requests == 0 and c0.grpc.requests == 0
    finally:
        await gw.stop()


def assert_binomial(count: int, n: int, p: float) -> None:
    """Within 4.5 standard deviations: a false failure about once in 150,000 runs."""
    sd = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= 4.5 * sd, (count, n, p)


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_splits_land_within_binomial_bounds(tmp_path, copies, layout, source):
    c0, c1, c2 = copies
    view = MeshView.of([
        Model("m", (Revision("m__1", copies=(c0.as_copy(),)), Revision("m__2", copies=(c1.as_copy(),))),
              rules=(RouteRule((Destination("m__1", 90), Destination("m__2", 10))),)),
        Model("t", (Revision("t__1", copies=(c0.as_copy(),)), Revision("t__2", copies=(c1.as_copy(),)),
                    Revision("t__3", copies=(c2.as_copy(),))),
              rules=(RouteRule((Destination("t__1", 5), Destination("t__2", 3), Destination("t__3", 2))),)),
    ])
    gw = await gateway(tmp_path, view, source, **layout)
    n = 400
    try:
        async with aiohttp.ClientSession() as s:
            async def one(model: str) -> tuple[int, str]:
                async with s.get(f"{gw.rest_url}/v2/models/{model}/ready") as r:
                    return r.status, (await r.json())["path"]

            m = Counter(await asyncio.gather(*(one("m") for _ in range(n))))
            t = Counter(await asyncio.gather(*(one("t") for _ in range(n))))
        # every request matched exactly one route of its split: routes share one random value
        assert sum(m.values()) == sum(m[(200, f"/v2/models/m__{i}/ready")] for i in (1, 2)) == n
        assert_binomial(m[(200, "/v2/models/m__2/ready")], n, 0.1)
        assert sum(t[(200, f"/v2/models/t__{i}/ready")] for i in (1, 2, 3)) == n
        assert_binomial(t[(200, "/v2/models/t__1/ready")], n, 0.5)
        assert_binomial(t[(200, "/v2/models/t__2/ready")], n, 0.3)
        # gRPC splits too
        grpc_copies = Counter()
        for _ in range(200):
            code, got = await grpc_infer(gw.grpc_target, "m")
            assert code == grpc.StatusCode.OK
            grpc_copies[got["copy"]] += 1
        assert_binomial(grpc_copies["c1"], 200, 0.1)
    finally:
        await gw.stop()


async def test_the_activators_replay_goes_back_to_the_revision_of_the_split_it_was_routed_to(
        tmp_path, copies, source):
    """A cold request replayed by the activator names its revision: the split is not drawn again
    (which could send it to another revision still cold, and back to the activator)."""
    c0, c1, _ = copies
    view = MeshView.of([Model("m", (Revision("m__1", copies=(c0.as_copy(),)),
                                    Revision("m__2", copies=(c1.as_copy(),))),
                              rules=(RouteRule((Destination("m__1", 50), Destination("m__2", 50))),))])
    gw = await gateway(tmp_path, view, source)
    try:
        async with aiohttp.ClientSession() as s:
            async def path(headers: dict[str, str]) -> str:
                async with s.get(f"{gw.rest_url}/v2/models/m/ready", headers=headers) as r:
                    return (await r.json())["path"]

            for rev in ("m__1", "m__2"):
                replay = {"x-msm-activated": "1", "x-msm-revision": rev}
                assert {await path(replay) for _ in range(20)} == {f"/v2/models/{rev}/ready"}
            # the revision header alone (a client's) pins nothing: the split still applies
            seen = {await path({"x-msm-revision": "m__1"}) for _ in range(40)}
            assert seen == {"/v2/models/m__1/ready", "/v2/models/m__2/ready"}
    finally:
        await gw.stop()


async def test_a_sticky_split_keeps_each_key_on_one_side_and_splits_the_keys_by_weight(
        tmp_path, copies, source):
    c0, c1, _ = copies
    rule = RouteRule((Destination("m__1", 70), Destination("m__2", 30)), sticky_header="x-user")
    view = MeshView.of([Model("m", (Revision("m__1", copies=(c0.as_copy(),)),
                                    Revision("m__2", copies=(c1.as_copy(),))), rules=(rule,))])
    gw = await gateway(tmp_path, view, source)
    try:
        async with aiohttp.ClientSession() as s:
            async def side(user: str | None, body: bool = False) -> str:
                headers = {"x-user": user} if user is not None else {}
                if body:  # a V2 `data` body: the classifier looks the route up again after the bucket
                    async with s.post(f"{gw.rest_url}/v2/models/m/infer", data=DATA_BODY,
                                      headers={**DATA_HEADERS, **headers}) as r:
                        got = await r.json()
                else:
                    async with s.get(f"{gw.rest_url}/v2/models/m/ready", headers=headers) as r:
                        got = await r.json()
                assert "x-msm-bucket" not in got["headers"]
                return got["copy"]

            users = [f"user-{i}" for i in range(200)]
            first = {u: await side(u) for u in users}
            for u in users[:40]:  # the same key, the same side: REST paths, bodies and gRPC alike
                assert {await side(u) for _ in range(3)} | {await side(u, body=True)} == {first[u]}
                _, got = await grpc_infer(gw.grpc_target, "m", metadata=(("x-user", u),))
                assert got["copy"] == first[u]
            # the gateway's hash is the one msm documents (buckets 0-6999 for m__1, 7000-9999 for m__2)
            assert first == {u: "c0" if sticky_bucket(u) < 7000 else "c1" for u in users}
            assert_binomial(sum(v == "c1" for v in first.values()), len(users), 0.3)
            # a caller's own bucket header chooses nothing: the key's bucket replaces it
            async with s.get(f"{gw.rest_url}/v2/models/m/ready",
                             headers={"x-user": users[0], "x-msm-bucket": "9999"}) as r:
                assert (await r.json())["copy"] == first[users[0]]
            # no key: split at random, both sides seen
            assert {await side(None) for _ in range(40)} == {"c0", "c1"}
    finally:
        await gw.stop()


async def test_a_mirror_copies_each_request_to_the_other_model_and_the_client_gets_the_primarys_answer(
        tmp_path, copies, source):
    c0, c1, _ = copies
    rule = RouteRule((Destination("m__1"),), mirrors=(Mirror("s", 100.0),))
    view = MeshView.of([Model("m", (Revision("m__1", copies=(c0.as_copy(),)),), rules=(rule,)),
                        Model("s", (Revision("s__1", copies=(c1.as_copy(),)),))])
    gw = await gateway(tmp_path, view, source)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{gw.rest_url}/v2/models/m/infer", data=DATA_BODY, headers=DATA_HEADERS) as r:
                assert (await r.json())["path"] == "/v2/models/m__1/infer"  # the primary answers
            (shadow,) = await first_seen(c1.rest, 1)  # shadows may arrive after the primary's answer
            assert shadow["path"] == "/v2/models/s__1/infer"  # the shadow model, under its own revision
        _, got = await grpc_infer(gw.grpc_target, "m")
        assert (got["copy"], got["model_name"]) == ("c0", "m__1")
        (shadow,) = await first_seen(c1.grpc, 1)
        assert shadow["model_name"] == "s__1"  # the body's model name rewritten for the shadow model
        assert shadow["vmodel"] == "m" and shadow["mirror"] == "s"
        assert c0.rest.requests == 1 and c0.grpc.requests == 1  # nothing went twice to the primary
        # the shadow model itself is called as before, unmirrored
        _, got = await grpc_infer(gw.grpc_target, "s")
        assert (got["copy"], got["model_name"]) == ("c1", "s__1")
        assert c0.grpc.requests == 1 and c1.grpc.requests == 2
    finally:
        await gw.stop()


async def test_header_rule_wins_before_the_default_rule(tmp_path, copies, source):
    c0, c1, _ = copies
    canary = RouteRule((Destination("m__2"),), headers=(HeaderMatch("x-canary", exact="1"),))
    view = MeshView.of([Model("m", (Revision("m__1", copies=(c0.as_copy(),)),
                                    Revision("m__2", copies=(c1.as_copy(),))),
                              rules=(canary,
                                     RouteRule((Destination("m__1"),))))])
    gw = await gateway(tmp_path, view, source)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{gw.rest_url}/v2/models/m/ready", headers={"x-canary": "1"}) as r:
                assert (await r.json())["path"] == "/v2/models/m__2/ready"
            async with s.get(f"{gw.rest_url}/v2/models/m/ready") as r:
                assert (await r.json())["path"] == "/v2/models/m__1/ready"
    finally:
        await gw.stop()


async def test_cold_revision_goes_to_the_activator_unrewritten(tmp_path, copies, source):
    activator = RestBackend("activator")
    await activator.start()
    view = MeshView.of([Model("cold", (Revision("cold__1"),))],
                       activator=ActivatorEndpoint("127.0.0.1", activator.port, copies[0].grpc.port))
    gw = await gateway(tmp_path, view, source)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{gw.rest_url}/v2/models/cold/infer", data=b'{"inputs": []}') as r:
                assert r.status == 200
                got = await r.json()
        assert (got["copy"], got["path"]) == ("activator", "/v2/models/cold/infer")
        _, got = await grpc_infer(gw.grpc_target, "cold")
        assert (got["copy"], got["model_name"]) == ("c0", "cold")
    finally:
        await gw.stop()
        await activator.stop()


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_killing_a_copy_mid_traffic_loses_no_request(tmp_path, copies, layout, source):
    c0, c1, c2 = copies
    # c2 holds another model on the same runtime: in the subset layout it shares the cluster
    view = MeshView.of([
        Model("m", (Revision("m__1", copies=(c0.as_copy(), c1.as_copy())),)),
        Model("o", (Revision("o__1", copies=(c2.as_copy(),)),)),
    ])
    gw = await gateway(tmp_path, view, source, **layout)
    total, concurrency, kill_after = 300, 8, 60
    statuses: Counter = Counter()
    served: Counter = Counter()
    done = 0
    try:
        async with aiohttp.ClientSession() as s:
            async def worker(grpc_too: bool) -> None:
                nonlocal done
                while done < total:
                    done += 1
                    if done == kill_after:
                        await c0.kill()
                    if grpc_too and done % 2:
                        code, got = await grpc_infer(gw.grpc_target, "m")
                        statuses[code.name] += 1
                        if code == grpc.StatusCode.OK:
                            served[got["copy"]] += 1
                        continue
                    async with s.post(f"{gw.rest_url}/v2/models/m/infer", data=DATA_BODY,
                                      headers=DATA_HEADERS) as r:
                        statuses[r.status] += 1
                        if r.status == 200:
                            served[(await r.json())["copy"]] += 1

            await asyncio.gather(*(worker(i % 2 == 0) for i in range(concurrency)))
        assert set(statuses) <= {200, "OK"}, statuses
        assert sum(statuses.values()) >= total
        assert served["c0"] > 0 and served["c1"] > served["c0"]
        assert "c2" not in served
    finally:
        await gw.stop()


def b64(address: str) -> str:
    return base64.b64encode(address.encode()).decode()


async def test_a_direct_replay_reaches_the_instance_it_names_only_with_the_token(
        tmp_path, copies, source):
    """cold__1 has no copy (its routes go to the activator); c0 and c1 are the runtime's instances:
    with the activator's token the replay goes to the one it names, c1, under the revision's id
    (REST, transcoded REST and gRPC); without it, to the activator; an address that is no instance
    of the runtime fails, it does not go elsewhere; the copy sees neither the token nor the
    address."""
    c0, c1, c2 = copies
    activator = RestBackend("activator")
    await activator.start()
    endpoint = ActivatorEndpoint("127.0.0.1", activator.port, c2.grpc.port, replay_token="tok")
    view = MeshView({"cold": Model("cold", (Revision("cold__1"),)),
                     "warm": Model("warm", (Revision("warm__1", copies=(c0.as_copy(),)),))}, endpoint,
                    runtime_instances={"default": (c0.as_copy(), c1.as_copy())})
    gw = await gateway(tmp_path, view, source)
    replay = {"x-msm-activated": "1", "x-msm-revision": "cold__1", "x-msm-replay-token": "tok"}
    internal = {"x-msm-replay-token", "x-msm-copy-rest", "x-msm-copy-grpc"}
    to_c1 = {**replay, "x-msm-copy-rest": b64(f"127.0.0.1:{c1.rest.port}"),
             "x-msm-copy-grpc": b64(f"127.0.0.1:{c1.grpc.port}")}
    try:
        async with aiohttp.ClientSession() as s:
            async def rest(path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, dict]:
                method = "POST" if body is not None else "GET"
                async with s.request(method, f"{gw.rest_url}{path}", headers=headers, data=body) as r:
                    return r.status, (await r.json() if r.content_type == "application/json" else {})

            status, got = await rest("/v2/models/cold/ready", to_c1)
            assert (status, got["copy"], got["path"]) == (200, "c1", "/v2/models/cold__1/ready")
            assert not internal & set(got["headers"])
            # a standard V2 body goes to the REST port, any other to the gRPC port (transcoded)
            status, got = await rest("/v2/models/cold/infer", to_c1, DATA_BODY)
            assert (status, got["copy"], got["path"]) == (200, "c1", "/v2/models/cold__1/infer")
            # (this backend's answer is no ModelInferResponse: what counts is where the call went)
            before = c1.grpc.requests
            await rest("/v2/models/cold/infer", to_c1, b'{"inputs": []}')
            assert c1.grpc.requests == before + 1 and c1.grpc.seen[-1]["model_name"] == "cold__1"
            # a client without the token, or with another, reaches the activator, as it came
            for token in (None, "guess"):
                spoof = {k: v for k, v in to_c1.items() if k != "x-msm-replay-token"}
                if token is not None:
                    spoof["x-msm-replay-token"] = token
                status, got = await rest("/v2/models/cold/ready", spoof)
                assert (status, got["copy"]) == (200, "activator")
            # c2 is no instance of the runtime: 503, and no copy nor the activator sees it
            seen = (c0.rest.requests, c1.rest.requests, c2.rest.requests, activator.requests)
            status, _ = await rest("/v2/models/cold/ready",
                                   {**to_c1, "x-msm-copy-rest": b64(f"127.0.0.1:{c2.rest.port}")})
            assert status == 503
            assert (c0.rest.requests, c1.rest.requests, c2.rest.requests, activator.requests) == seen
        code, got = await grpc_infer(gw.grpc_target, "cold", metadata=(
            *replay.items(), ("x-msm-copy-grpc", b64(f"127.0.0.1:{c1.grpc.port}"))))
        assert code == grpc.StatusCode.OK and (got["copy"], got["model_name"]) == ("c1", "cold__1")
        assert not internal & set(c1.grpc.seen[-1]["msm"])
    finally:
        await gw.stop()
        await activator.stop()
