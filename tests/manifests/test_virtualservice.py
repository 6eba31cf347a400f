"""Reading Istio VirtualServices as traffic policy between models: every supported field read with
Istio's meaning, every other field refused by name, all problems of a document said at once."""

from __future__ import annotations

import copy

import pytest

from placement.manifests.virtualservice import (
    Fault,
    HeaderOps,
    HttpMatch,
    Mirror,
    Retries,
    RouteDestination,
    StringMatch,
    VirtualServiceError,
    duration_s,
    parse_virtual_service,
)

FULL = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "mnist", "namespace": "modelmesh-serving"},
    "spec": {
        "hosts": ["sklearn-mnist", "mnist-ab"],
        "gateways": ["istio-system/msm-model-gateway"],
        "http": [
            {"name": "testers",
             "match": [{"headers": {"X-Tester": {"exact": "yes"}}},
                       {"uri": {"prefix": "/v2/models/mnist-ab/"},
                        "headers": {"x-team": {"regex": "ml-.*"}}}],
             "route": [{"destination": {"host": "sklearn-mnist-v2"}}],
             "timeout": "2.5s",
             "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "connect-failure,reset,503"},
             "headers": {"request": {"set": {"X-Via": "msm"}, "remove": ["X-Debug"]},
                         "response": {"add": {"x-served-by": "v2"}}}},
            {"route": [{"destination": {"host": "sklearn-mnist"}, "weight": 90},
                       {"destination": {"host": "sklearn-mnist-v2"}, "weight": 10}],
             "mirror": {"host": "mnist-shadow"}, "mirrorPercentage": {"value": 25.5},
             "fault": {"delay": {"fixedDelay": "100ms", "percentage": {"value": 1}},
                       "abort": {"httpStatus": 503, "percentage": {"value": 0.5}}}},
        ],
    },
}


def test_every_supported_field_is_read_with_istios_meaning() -> None:
    vs = parse_virtual_service(FULL)
    assert (vs.namespace, vs.name, vs.hosts) == ("modelmesh-serving", "mnist", ("sklearn-mnist", "mnist-ab"))
    assert vs.gateways == ("istio-system/msm-model-gateway",)
    first, second = vs.http
    assert first.name == "testers"
    assert first.matches == (
        HttpMatch(None, (("x-tester", StringMatch(exact="yes")),)),  # header names are case-insensitive
        HttpMatch(StringMatch(prefix="/v2/models/mnist-ab/"), (("x-team", StringMatch(regex="ml-.*")),)))
    assert first.route == (RouteDestination("sklearn-mnist-v2", 100),)  # one destination: all of it
    assert first.timeout_s == 2.5
    assert first.retries == Retries(3, 0.5, ("connect-failure", "reset", "503"))
    assert first.request_headers == HeaderOps(set=(("x-via", "msm"),), remove=("x-debug",))
    assert first.response_headers == HeaderOps(add=(("x-served-by", "v2"),))
    assert second.matches == ()
    assert second.route == (RouteDestination("sklearn-mnist", 90), RouteDestination("sklearn-mnist-v2", 10))
    assert second.mirrors == (Mirror("mnist-shadow", 25.5),)
    assert second.fault == Fault(0.1, 1.0, 503, None, 0.5)


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_istios_three_api_versions_are_read(version) -> None:
    doc = copy.deepcopy(FULL)
    doc["apiVersion"] = f"networking.istio.io/{version}"
    assert parse_virtual_service(doc).name == "mnist"


def test_mirrors_list_and_grpc_abort() -> None:
    doc = copy.deepcopy(FULL)
    rule = doc["spec"]["http"][1]
    del rule["mirror"], rule["mirrorPercentage"]
    rule["mirrors"] = [{"destination": {"host": "a"}},
                       {"destination": {"host": "b"}, "percentage": {"value": 5}}]
    rule["fault"] = {"abort": {"grpcStatus": "UNAVAILABLE"}}
    vs = parse_virtual_service(doc)
    assert vs.http[1].mirrors == (Mirror("a", 100.0), Mirror("b", 5.0))
    assert vs.http[1].fault == Fault(None, 100.0, None, 14, 100.0)


@pytest.mark.parametrize(("value", "seconds"), [("1s", 1.0), ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0),
                                                ("1h", 3600.0), ("100us", 1e-4)])
def test_durations(value, seconds) -> None:
    assert duration_s(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["1", "s", "-1s", "1 s", "1d", 5, None])
def test_bad_durations(value) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_s(value)


def broken(path: str, value, delete: bool = False) -> dict:
    doc = copy.deepcopy(FULL)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if delete:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(("path", "value", "says"), [
    ("apiVersion", "networking.istio.io/v2", "msm reads networking.istio.io/v1"),
    ("kind", "DestinationRule", "not VirtualService"),
    ("spec.hosts", [], "at least one model name"),
    ("spec.hosts", ["Upper_Case"], "is not a model name"),
    ("spec.hosts", ["*"], "is not a model name"),
    ("spec.hosts", ["a", "a"], "appears twice"),
    ("spec.tcp", [{}], "spec.tcp: not supported by msm"),
    ("spec.http", [], "at least one rule"),
    ("spec.http.1.route.0.weight", 80, "weights add up to 90, not 100"),
    ("spec.http.1.route.0.weight", 101, "from 0 to 100"),
    ("spec.http.1.route.0.destination.subset", "v1", "revisions are msm's, not subsets"),
    ("spec.http.1.route.0.destination.port", {"number": 80}, "fixed"),
    ("spec.http.0.route", [], "at least one destination"),
    ("spec.http.0.redirect", {"uri": "/x"}, "does not redirect"),
    ("spec.http.0.rewrite", {"uri": "/x"}, "rewriting it is not supported"),
    ("spec.http.0.match.0.method", {"exact": "GET"}, "uri and headers only"),
    ("spec.http.0.match.0.headers.x-tester", {"exact": "a", "prefix": "b"}, "exactly one of exact, prefix"),
    ("spec.http.0.match.0.headers.x-tester", {"regex": "(unclosed"},
     "not an RE2 regular expression (Envoy's engine): missing ): (unclosed"),
    ("spec.http.0.match.0.headers.x-tester", {"regex": "(?=look)ahead"}, "invalid perl operator: (?="),
    ("spec.http.0.match.0.headers.x-tester", {"regex": "(?>atomic)"}, "invalid perl operator: (?>"),
    ("spec.http.0.match.0.headers.x-tester", {"regex": "possessive*+"}, "bad repetition operator: *+"),
    ("spec.http.0.match.0.headers.x-tester", {"regex": "(a)?(?(1)b|c)"}, "not an RE2 regular expression"),
    ("spec.http.0.match.0.headers.x-tester", {"regex": r"(\w+)-\1"}, "invalid escape sequence: \\1"),
    # RE2 parses it, but Envoy refuses it: its program (203) is over Envoy's limit of 100
    ("spec.http.0.match.0.headers.x-tester", {"regex": "a{1,100}"},
     "too complex for Envoy: its RE2 program size is 203, over Envoy's limit of 100"),
    ("spec.http.0.timeout", "soon", "not a duration"),
    ("spec.http.0.retries.attempts", -1, "from 0 to 10"),
    ("spec.http.0.retries.retryOn", "on-a-whim", "not a retry condition"),
    ("spec.http.0.retries.backoff", "1s", "default backoff"),
    ("spec.http.1.mirrorPercentage", {"value": 200}, "percentage from 0 to 100"),
    ("spec.http.1.fault.abort.httpStatus", 42, "from 200 to 599"),
    ("spec.http.1.fault.delay.exponentialDelay", "1s", "fixed delays only"),
    ("spec.http.1.fault", {}, "a delay or an abort"),
    ("spec.http.0.headers.request.set", {"x": 1}, "map of header names to strings"),
    ("spec.http.0.headers.request.set", {"x-msm-model": "b"}, "the gateway's to set"),
    ("spec.http.0.headers.request.set", {"MM-VModel-Id": "b"}, "the gateway's to set"),
    ("spec.http.0.headers.request.remove", [":path"], "is not a header name"),
    ("spec.http.0.headers.response.add", {"bad name": "x"}, "is not a header name"),
    ("spec.http.1.fault", {"abort": {"grpcStatus": "SORRY"}}, "not a gRPC status name"),
    ("spec.http.0.mystery", True, "spec.http[0].mystery: unknown field"),
])
def test_bad_input_is_refused_naming_the_field(path, value, says) -> None:
    with pytest.raises(VirtualServiceError) as e:
        parse_virtual_service(broken(path, value))
    assert says in str(e.value), str(e.value)
    assert str(e.value).startswith("VirtualService modelmesh-serving/mnist:")


def test_every_problem_is_said_at_once() -> None:
    doc = broken("spec.http.0.timeout", "soon")
    doc["spec"]["http"][1]["route"][0]["weight"] = 50
    doc["spec"]["hosts"] = ["OK?"]
    with pytest.raises(VirtualServiceError) as e:
        parse_virtual_service(doc)
    assert len(e.value.problems) == 3, e.value.problems


def test_a_missing_namespace_is_the_default_one() -> None:
    doc = broken("metadata.namespace", None, delete=True)
    assert parse_virtual_service(doc, default_namespace="local").namespace == "local"
