"""VirtualServices in the manifests folder: which one routes which host, and bad input that
changes nothing else (the watched folder, as ``msm up`` reads it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from _manifests_helpers import isvc, local_dir, runtime, write

from placement.manifests.kserve import load_manifest_dir
from placement.sources import LocalDirSource
from placement.traffic.policy import RouteDestination

_tick = [1_900_000_000]


def put(path: Path, text: str) -> None:
    write(path, text)
    _tick[0] += 10
    os.utime(path, ns=(_tick[0] * 10**9, _tick[0] * 10**9))


def vs(name: str, hosts: list[str], route: list[tuple[str, int]], *, namespace: str = "modelmesh-serving",
       version: str = "v1", extra_rule: dict | None = None) -> str:
    dests = [{"destination": {"host": h}, **({"weight": w} if len(route) > 1 else {})} for h, w in route]
    rules = ([extra_rule] if extra_rule else []) + [{"route": dests}]
    return yaml.safe_dump({"apiVersion": f"networking.istio.io/{version}", "kind": "VirtualService",
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": {"hosts": hosts, "http": rules}}, sort_keys=False)


@pytest.fixture
async def folder(tmp_path: Path):
    local_dir(tmp_path)
    put(tmp_path / "rt.yaml", runtime("mlserver", namespace=None, kind="ClusterServingRuntime"))
    for m in ("a", "b", "c"):
        put(tmp_path / f"{m}.yaml", isvc(m))
    put(tmp_path / "other-ns.yaml", isvc("d", namespace="team-x"))
    put(tmp_path / "split.yaml", vs("split", ["ab"], [("a", 90), ("b", 10)]))
    source = LocalDirSource(tmp_path, poll_interval=3600)
    state = await source.start()
    assert not state.errors, state.errors
    try:
        yield tmp_path, source
    finally:
        await source.stop()


def routes(state, host: str) -> tuple[RouteDestination, ...]:
    return state.traffic[host].rules[-1].route


async def test_a_virtualservice_routes_its_host(folder) -> None:
    _, source = folder
    policy = source.state.traffic["ab"]
    assert policy.source == "VirtualService modelmesh-serving/split"
    assert routes(source.state, "ab") == (RouteDestination("a", 90), RouteDestination("b", 10))
    assert set(source.state.models) == {"a", "b", "c", "d"}  # a VirtualService is not a model


@pytest.mark.parametrize("version", ["v1beta1", "v1alpha3"])
async def test_older_api_versions_are_read(folder, version) -> None:
    d, source = folder
    put(d / "split.yaml", vs("split", ["ab"], [("a", 50), ("c", 50)], version=version))
    await source.poll()
    assert routes(source.state, "ab") == (RouteDestination("a", 50), RouteDestination("c", 50))


@pytest.mark.parametrize("doc, says", [
    (vs("split", ["ab"], [("a", 90), ("gone", 10)]),
     "destination gone is not an InferenceService msm serves"),
    (vs("split", ["ab"], [("a", 90), ("d", 10)]), "destination d is in namespace team-x"),
    (vs("split", ["ab"], [("a", 80), ("b", 10)]), "weights add up to 90, not 100"),
    (vs("split", ["ab"], [("a", 90), ("b", 10)], extra_rule={
        "match": [{"headers": {"x": {"regex": "a(?=b)"}}}], "route": [{"destination": {"host": "c"}}]}),
     "not an RE2 regular expression"),
    (vs("split", ["ab"], [("a", 90), ("b", 10)], extra_rule={
        "route": [{"destination": {"host": "c"}}], "mirror": {"host": "gone"}}),
     "destination gone is not an InferenceService msm serves"),
    (vs("split", ["ab"], [("a", 90), ("b", 10)], extra_rule={
        "match": [{"name": 7}], "route": [{"destination": {"host": "c"}}]}),
     "spec.http[0].match[0].name must be of type string, got integer 7 (Istio CRD schema)"),
])
async def test_a_bad_edit_is_reported_and_the_previous_routing_stays(folder, doc, says) -> None:
    d, source = folder
    before = source.state.traffic
    put(d / "split.yaml", doc)
    await source.poll()
    assert source.state.traffic == before
    assert says in source.state.errors["split.yaml"], source.state.errors
    assert "stays in use" in source.state.errors["split.yaml"]
    assert set(source.state.models) == {"a", "b", "c", "d"}  # nothing else changed


async def test_a_second_claim_on_a_host_is_refused_naming_the_holder(folder) -> None:
    d, source = folder
    put(d / "0-first-by-name.yaml", vs("newcomer", ["ab", "xy"], [("c", 100)]))
    await source.poll()
    state = source.state
    assert routes(state, "ab") == (RouteDestination("a", 90), RouteDestination("b", 10))
    assert "xy" not in state.traffic  # refused whole, not in part
    err = state.errors["0-first-by-name.yaml"]
    assert "host ab is already routed by VirtualService modelmesh-serving/split, which stays in use" in err


async def test_a_host_that_is_another_namespaces_model_is_refused(folder) -> None:
    d, source = folder
    put(d / "steal.yaml", vs("steal", ["d"], [("a", 100)]))
    await source.poll()
    assert "d" not in source.state.traffic
    assert "host d is the InferenceService of namespace team-x" in source.state.errors["steal.yaml"]


async def test_a_virtualservice_may_route_its_own_namespaces_model_name(folder) -> None:
    d, source = folder
    put(d / "a-to-c.yaml", vs("a-to-c", ["a"], [("a", 50), ("c", 50)]))
    await source.poll()
    assert routes(source.state, "a") == (RouteDestination("a", 50), RouteDestination("c", 50))
    assert "a" in source.state.models and not source.state.errors


async def test_a_deleted_destination_takes_the_virtualservice_out_with_a_message(folder) -> None:
    d, source = folder
    (d / "b.yaml").unlink()
    await source.poll()
    assert "ab" not in source.state.traffic
    assert "destination b is not an InferenceService msm serves" in source.state.errors["split.yaml"]
    put(d / "b.yaml", isvc("b"))  # back: the VirtualService routes again, the problem is gone
    await source.poll()
    assert "ab" in source.state.traffic and not source.state.errors


def test_msm_validate_reads_virtualservices(tmp_path) -> None:
    local_dir(tmp_path)
    write(tmp_path / "rt.yaml", runtime("mlserver"))
    write(tmp_path / "a.yaml", isvc("a"))
    write(tmp_path / "vs.yaml", vs("v", ["virtual"], [("a", 100)]))
    state = load_manifest_dir(tmp_path)
    assert state.traffic["virtual"].source == "VirtualService modelmesh-serving/v" and not state.errors


def test_the_example_virtualservice_routes_the_quickstart(tmp_path) -> None:
    """examples/traffic/digits-ab.yaml, copied into the quickstart as docs/traffic.md says."""
    import shutil

    repo = Path(__file__).resolve().parents[2]
    folder = tmp_path / "quickstart"
    shutil.copytree(repo / "examples" / "quickstart", folder, ignore=shutil.ignore_patterns(".msm"))
    shutil.copy(repo / "examples" / "traffic" / "digits-ab.yaml", folder)
    (folder / "models").mkdir(exist_ok=True)
    for f in ("mnist-svm.joblib", "mnist-logreg.joblib", "mnist-forest.joblib"):
        (folder / "models" / f).write_bytes(b"\0" * 100)  # placeholders: only sizes are read here
    state = load_manifest_dir(folder)
    assert not state.errors, state.errors
    policy = state.traffic["digits"]
    assert policy.sticky_header == "x-user-id" and len(policy.rules) == 2
