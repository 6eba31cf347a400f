"""The leader's routes as JSON and back (how followers serve them): lossless, and a malformed
answer is refused with what is wrong, never half-applied."""

from __future__ import annotations

import json

import pytest

from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    HeaderMatch,
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
                    RouteRule((Destination("m__v1", 90), Destination("m__v2", 10)), (), None, None, "m__v2")))
    cold = Model("cold", (Revision("cold__v1", "mlserver-1.x", ()),))
    return MeshView.of([canary, cold], ActivatorEndpoint("10.0.0.9", 9001, 9002))


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
