"""The leader's routes as JSON and back (how followers serve them): lossless, and a malformed
answer is refused with what is wrong, never half-applied."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    Fault,
    HeaderMatch,
    HeaderOps,
    MeasureEndpoint,
    MeshView,
    Model,
    Revision,
    RouteRule,
)
from xds_server.view_codec import view_from_dict, view_to_dict


def a_view() -> MeshView:
    copies = (Copy("rt-0.ns", "10.0.0.1", 8002, 8001, mesh_tls=True), Copy("rt-1.ns", "10.0.0.2", 8002, 8001))
    revisions = (Revision("m__v1", "mlserver-1.x", copies), Revision("m__v2", "mlserver-1.x", copies[:1]))
    canary = Model("m", revisions,
                   (RouteRule((Destination("m__v2", 100),), (HeaderMatch("x-canary", exact="yes"),), 5.0, 2),
                    RouteRule((Destination("m__v1", 90), Destination("m__v2", 10)), (), None, None)))
    cold = Model("cold", (Revision("cold__v1", "mlserver-1.x", ()),))
    # a VirtualService's host: a borrowed revision, and every rule setting
    policy = RouteRule(
        (Destination("m__v1", 700_000), Destination("cold__v1", 300_000)),
        (HeaderMatch(":path", prefix="/v2"),),
        per_try_timeout_s=0.5, retry_on="5xx,reset", retries=3,
        fault=Fault(delay_s=0.2, delay_percent=10.0, abort_grpc_status=14, abort_percent=2.5),
        request_headers=HeaderOps(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)),
        response_headers=HeaderOps(set=(("x-d", "3"),)))
    borrowed = (replace(revisions[0], model="m"), Revision("cold__v1", "mlserver-1.x", (), "cold"))
    virtual = Model("digits", borrowed, (policy,))
    view = MeshView.of([canary, cold, virtual], ActivatorEndpoint("10.0.0.9", 9001, 9002))
    return replace(view, measure=MeasureEndpoint("10.0.0.9", 18000))


def test_a_view_survives_the_round_trip_through_json() -> None:
    view = a_view()
    again = view_from_dict(json.loads(json.dumps(view_to_dict(view))))
    assert again == view
    assert view_from_dict(view_to_dict(MeshView())) == MeshView()


@pytest.mark.parametrize("breakage, says", [
    (lambda d: d["models"][0]["revisions"][0]["copies"][0].update(rest_port=70000), "not a port"),
    (lambda d: d["models"][0]["revisions"][0]["copies"][0].update(address=None), "address"),
    (lambda d: d["models"][0].update(name=7), "name"),
    (lambda d: d["models"][0]["rules"][1]["destinations"][0].update(weight="90"), "weight"),
    (lambda d: d["models"][0]["rules"][1]["destinations"][0].update(revision="m__v9"), "m__v9"),
    (lambda d: d["activator"].update(grpc_port=True), "grpc_port"),
    (lambda d: d["models"][0]["revisions"][0]["copies"][0].update(mesh_tls="yes"), "mesh_tls"),
    (lambda d: d.update(models={"m": {}}), "models"),
    (lambda d: d["models"][2]["rules"][0]["fault"].update(abort_grpc_status=99), "not a gRPC status"),
    (lambda d: d["models"][2]["rules"][0]["request_headers"].update(set=[["x-a"]]), "pairs"),
    (lambda d: d["models"][2]["rules"][0]["response_headers"].update(remove=[":path"]), "may change"),
    (lambda d: d["models"][2]["revisions"][0].update(model=5), "model"),
    (lambda d: d["measure"].update(port=0), "not a port"),
])
def test_a_malformed_view_is_refused_saying_what_is_wrong(breakage, says: str) -> None:
    data = view_to_dict(a_view())
    breakage(data)
    with pytest.raises(ValueError, match=says):
        view_from_dict(data)


def test_not_an_object_is_refused() -> None:
    for data in (None, [], "view"):
        with pytest.raises(ValueError):
            view_from_dict(data)
