"""The incremental translator step by step: what each call sends (and nothing more), what it
rebuilds, and that the whole set stays equal to a full translation through views that add,
change and remove models sharing a (runtime, shard) group, cold or not."""

from __future__ import annotations

from typing import Any

import pytest

from xds_server import resource_types as rt
from xds_server.mesh_view import (
    ActivatorEndpoint,
    Copy,
    Destination,
    MeasureEndpoint,
    MeshView,
    Mirror,
    Model,
    Revision,
    RouteRule,
)
from xds_server.translate import GatewayOptions, translate
from xds_server.translate import names as nm
from xds_server.translate.incremental import IncrementalTranslator

C0 = Copy("rt-0", "10.0.0.1", 8080, 8081)
C1 = Copy("rt-1", "10.0.0.2", 8080, 8081)
ACT = ActivatorEndpoint("127.0.0.1", 7000, 7001)
SUBSET = GatewayOptions(subset_shards=1)  # one group per runtime: models share it


def wire(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    return {t: {n: m.SerializeToString(deterministic=True) for n, m in v.items()}
            for t, v in res.items() if v}


def same_as_full(t: IncrementalTranslator, view: MeshView) -> None:
    assert wire(t.translate(view)) == wire(translate(view, t.opts))


def warm(name: str, *copies: Copy, rules: tuple[RouteRule, ...] = ()) -> Model:
    return Model(name, (Revision(f"{name}__1", copies=copies or (C0,)),), rules=rules)


def cold(name: str, rules: tuple[RouteRule, ...] = ()) -> Model:
    return Model(name, (Revision(f"{name}__1"),), rules=rules)


def test_a_fresh_translator_has_rebuilt_nothing_and_a_repeated_view_sends_nothing() -> None:
    t = IncrementalTranslator(SUBSET)
    assert t.rebuilt == 0
    view = MeshView.of([warm("a"), cold("b")])
    first = t.changes(view)
    assert set(first[rt.LISTENER]) == {"msm_rest", "msm_grpc", "msm_mirror"}
    assert nm.MEASURE_CLUSTER not in first[rt.CLUSTER]  # no measure endpoint: nothing to remove either
    assert None not in [m for c in first.values() for m in c.values()]
    assert t.changes(view) == {} and t.rebuilt == 0
    # a view rebuilt from equal models is the same view
    again = MeshView.of([warm("a"), cold("b")])
    assert again.models["a"] is not view.models["a"]
    assert t.changes(again) == {} and t.rebuilt == 0


def test_the_flat_layout_is_translated_whole_with_the_translators_options() -> None:
    opts = GatewayOptions(route_layout="flat", cluster_layout="per_revision", rest_port=9100)
    t = IncrementalTranslator(opts)
    assert not t.incremental
    view = MeshView.of([warm("a"), cold("b")], ACT)
    assert wire(t.translate(view)) == wire(translate(view, opts))
    with pytest.raises(ValueError, match=r"^incremental translation needs the scoped route layout$"):
        t.changes(view)


def test_a_measure_endpoint_the_options_do_not_use_is_removed_harmlessly() -> None:
    t = IncrementalTranslator(GatewayOptions(measure_cluster="xds"))  # a bootstrap cluster
    view = MeshView(models={}, measure=MeasureEndpoint("10.0.0.7", 18000))
    assert t.changes(view)[rt.CLUSTER][nm.MEASURE_CLUSTER] is None
    same_as_full(t, view)


def test_removed_models_are_each_counted_and_their_resources_removed() -> None:
    opts = GatewayOptions(cluster_layout="per_revision")
    t = IncrementalTranslator(opts)
    t.changes(MeshView.of([warm("a"), warm("b"), warm("c")]))
    view = MeshView.of([warm("c")])
    changes = t.changes(view)
    assert t.rebuilt == 2
    assert changes[rt.ROUTE] == {f"msm_{k}/{m}": None for k in nm.KINDS for m in "ab"}
    assert changes[rt.CLUSTER] == {f"rev_{k}_{m}__1": None for k in nm.KINDS for m in "ab"}
    same_as_full(t, view)


def test_a_group_of_cold_models_falls_back_to_the_activator_once_it_comes() -> None:
    t = IncrementalTranslator(SUBSET)
    t.changes(MeshView.of([cold("a")]))
    view = MeshView.of([cold("a")], ACT)
    changes = t.changes(view)
    fallbacks = {nm.fallback_cluster(nm.runtime_cluster(k, "default", 0)) for k in nm.KINDS}
    assert fallbacks <= set(changes[rt.CLUSTER])
    same_as_full(t, view)
    view = MeshView.of([cold("a")])
    assert set(t.changes(view)[rt.CLUSTER]) >= {"fb_rt_rest_default_0", "activator_rest"}
    same_as_full(t, view)


def test_a_group_stays_while_a_cold_model_is_in_it() -> None:
    t = IncrementalTranslator(SUBSET)
    steps = [
        MeshView.of([warm("a"), cold("b")]),
        MeshView.of([cold("b")]),  # the model with copies goes; the cold one keeps the group
        MeshView.of([warm("a"), cold("b")]),
        # the cold model changes (a rule): it is still one member of the group, not two or none
        MeshView.of([warm("a"), cold("b", rules=(RouteRule((Destination("b__1"),), timeout_s=3.0),))]),
        MeshView.of([cold("b", rules=(RouteRule((Destination("b__1"),), timeout_s=3.0),))]),
    ]
    for view in steps:
        t.changes(view)
        same_as_full(t, view)
        assert {"rt_rest_default_0", "rt_grpc_default_0"} <= set(t.translate(view)[rt.CLUSTER])
    t.changes(MeshView.of([]))
    assert not {"rt_rest_default_0", "rt_grpc_default_0"} & set(t.translate(MeshView.of([]))[rt.CLUSTER])


def test_a_revision_listed_twice_on_an_instance_stays_until_its_last_listing_goes() -> None:
    # two models owning one revision id (not something the engine publishes): the group counts
    # what each model put in, so removing one leaves the other's listing
    shared = Revision("shared__1", copies=(C0,))
    t = IncrementalTranslator(SUBSET)
    t.changes(MeshView.of([Model("a", (shared,)), Model("b", (shared,))]))
    view = MeshView.of([Model("b", (shared,))])
    t.changes(view)
    same_as_full(t, view)
    (locality,) = t.translate(view)[rt.ENDPOINT]["rt_rest_default_0"].endpoints
    (ep,) = locality.lb_endpoints
    assert [v.string_value for v in ep.metadata.filter_metadata[nm.LB_METADATA].fields[
        nm.SUBSET_KEY].list_value.values] == ["shared__1"]


def test_a_removed_model_no_longer_mirrors() -> None:
    mirrors = (RouteRule((Destination("a__1"),), mirrors=(Mirror("b"),)),)
    t = IncrementalTranslator(GatewayOptions(cluster_layout="per_revision"))
    t.changes(MeshView.of([warm("a", rules=mirrors), warm("b", C1)]))
    view = MeshView.of([warm("b", C1)])
    changes = t.changes(view)
    assert t.rebuilt == 2  # a's removal and the mirror listener's routes
    assert not changes[rt.ROUTE][nm.MIRROR_ROUTE].virtual_hosts[0].routes
    same_as_full(t, view)
