"""Every refusal of a VirtualService, in full: one fragment per check, and the exact problems msm
reports for it (what a user reads in ``msm validate``, ``msm status`` and the object's status).

Each case edits a small valid VirtualService (namespace ``team``, name ``ab``, host ``ab``, one
rule routing to model ``a``) and lists every problem of the result, word for word: the field's
path, then the reason. A check that stops firing, fires on the wrong field, reports twice or
loses its explanation fails here. The values read from accepted fields are pinned beside them,
at the bounds of each range.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from placement.manifests.virtualservice import (
    STICKY_ANNOTATION,
    Claim,
    Fault,
    HeaderOps,
    HttpMatch,
    HttpRule,
    Mirror,
    Retries,
    RouteDestination,
    StringMatch,
    VirtualService,
    VirtualServiceError,
    document_problems,
    parse_virtual_service,
    resolve_traffic,
)
from placement.traffic.policy import HostPolicy

BASE: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "ab", "namespace": "team"},
    "spec": {"hosts": ["ab"], "http": [{"route": [{"destination": {"host": "a"}}]}]},
}
READS = ("msm reads networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3")
NOT_A_MODEL = "is not a model name (lowercase letters, digits, '-', '.')"
GATEWAYS = "is the gateway's to set: routing and the data path depend on it"
WEIGHT = "an integer from 0 to 100 (required when a rule has several destinations)"
R = "spec.http[0]"


def edited(edit: Callable[[dict], Any]) -> dict:
    doc = copy.deepcopy(BASE)
    edit(doc)
    return doc


def spec(**fields: Any) -> Callable[[dict], Any]:
    return lambda d: d["spec"].update(fields)


def rule(**fields: Any) -> Callable[[dict], Any]:
    return lambda d: d["spec"]["http"][0].update(fields)


def two(a: Any, b: Any) -> list[dict]:
    """A route of two destinations, ``a`` and ``b``, each a (host, weight) or a whole entry."""
    return [x if isinstance(x, dict) else {"destination": {"host": x[0]}, "weight": x[1]} for x in (a, b)]


def refusal(doc: Any, where: str = "VirtualService team/ab") -> list[str]:
    with pytest.raises(VirtualServiceError) as e:
        parse_virtual_service(doc)
    assert e.value.where == where
    assert str(e.value) == f"{where}: " + "; ".join(e.value.problems)
    return e.value.problems


DOCUMENT_CASES: list[tuple[str, Callable[[dict], Any], list[str]]] = [
    ("unknown-field", lambda d: d.update(extra=1), ["VirtualService.extra: unknown field"]),
    ("api-group", lambda d: d.update(apiVersion="networking.example.io/v1"),
     [f"apiVersion: 'networking.example.io/v1': {READS}"]),
    ("api-version", lambda d: d.update(apiVersion="networking.istio.io/v2"),
     [f"apiVersion: 'networking.istio.io/v2': {READS}"]),
    ("api-no-version", lambda d: d.update(apiVersion="networking.istio.io"),
     [f"apiVersion: 'networking.istio.io': {READS}"]),
    ("api-missing", lambda d: d.pop("apiVersion"), [f"apiVersion: None: {READS}"]),
    ("kind", lambda d: d.update(kind="Gateway"), ["kind: 'Gateway', not VirtualService"]),
    ("kind-missing", lambda d: d.pop("kind"), ["kind: None, not VirtualService"]),
    ("spec-not-object", lambda d: d.update(spec=["ab"]),
     ["spec: not an object", "spec.hosts: at least one model name", "spec.http: at least one rule"]),
    ("spec-unknown", spec(hostz=["ab"]), ["spec.hostz: unknown field"]),
    ("tcp", spec(tcp=[{}]), ["spec.tcp: not supported by msm: models are reached over HTTP and gRPC only"]),
    ("tls", spec(tls=[{}]), ["spec.tls: not supported by msm: TLS routes are not models'"]),
    ("hosts-missing", lambda d: d["spec"].pop("hosts"), ["spec.hosts: at least one model name"]),
    ("hosts-empty", spec(hosts=[]), ["spec.hosts: at least one model name"]),
    ("hosts-not-list", spec(hosts="ab"), ["spec.hosts: at least one model name"]),
    ("host-wildcard", spec(hosts=["ab", "*"]), [f"spec.hosts[1]: '*' {NOT_A_MODEL}"]),
    ("host-upper", spec(hosts=["Ab"]), [f"spec.hosts[0]: 'Ab' {NOT_A_MODEL}"]),
    ("host-leading-dash", spec(hosts=["-ab"]), [f"spec.hosts[0]: '-ab' {NOT_A_MODEL}"]),
    ("host-trailing-dot", spec(hosts=["ab."]), [f"spec.hosts[0]: 'ab.' {NOT_A_MODEL}"]),
    ("host-too-long", spec(hosts=["a" * 254]), [f"spec.hosts[0]: '{'a' * 254}' {NOT_A_MODEL}"]),
    ("host-not-string", spec(hosts=[7]), [f"spec.hosts[0]: 7 {NOT_A_MODEL}"]),
    ("hosts-twice", spec(hosts=["ab", "cd", "ab"]), ["spec.hosts: a name appears twice"]),
    ("gateways-not-list", spec(gateways="mesh"), ["spec.gateways: a list of gateway names"]),
    ("gateways-not-strings", spec(gateways=["mesh", 1]), ["spec.gateways: a list of gateway names"]),
    ("export-not-list", spec(exportTo="*"), ["spec.exportTo: a list of namespaces"]),
    ("export-not-strings", spec(exportTo=["team", 1]), ["spec.exportTo: a list of namespaces"]),
    ("http-missing", lambda d: d["spec"].pop("http"), ["spec.http: at least one rule"]),
    ("http-empty", spec(http=[]), ["spec.http: at least one rule"]),
    ("http-not-list", spec(http={"route": []}), ["spec.http: at least one rule"]),
    ("sticky-not-string", lambda d: d["metadata"].update(annotations={STICKY_ANNOTATION: 7}),
     [f"metadata.annotations.{STICKY_ANNOTATION}: a request header name"]),
    ("sticky-not-a-header", lambda d: d["metadata"].update(annotations={STICKY_ANNOTATION: "user id"}),
     [f"metadata.annotations.{STICKY_ANNOTATION}: 'user id' is not a header name"]),
    ("sticky-reserved", lambda d: d["metadata"].update(annotations={STICKY_ANNOTATION: "Host"}),
     [f"metadata.annotations.{STICKY_ANNOTATION}: 'Host' {GATEWAYS}"]),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in DOCUMENT_CASES],
                         ids=[c[0] for c in DOCUMENT_CASES])
def test_document_refusals(edit: Callable[[dict], Any], expected: list[str]) -> None:
    assert refusal(edited(edit)) == expected


def test_a_document_that_is_not_an_object_says_everything_it_lacks() -> None:
    assert refusal(["ab"], where="VirtualService default/?") == [
        "VirtualService: not an object", f"apiVersion: None: {READS}", "kind: None, not VirtualService",
        "metadata.name: required", "spec: not an object", "spec.hosts: at least one model name",
        "spec.http: at least one rule"]


@pytest.mark.parametrize("metadata", [None, "ab", {"namespace": "team"}, {"name": 7, "namespace": "team"},
                                      {"name": "", "namespace": "team"}])
def test_a_document_without_a_name_is_named_by_a_question_mark(metadata: Any) -> None:
    doc = edited(lambda d: d.update(metadata=metadata))
    where = "VirtualService team/?" if isinstance(metadata, dict) else "VirtualService default/?"
    assert refusal(doc, where=where) == ["metadata.name: required"]


RULE_REFUSED = [
    ("redirect", "a model route answers inference, it does not redirect"),
    ("rewrite", "the path names the model; rewriting it is not supported"),
    ("delegate", "delegate VirtualServices are not supported"),
    ("directResponse", "a direct response is not inference"),
    ("corsPolicy", "CORS is not configured per model"),
]
MATCH_REFUSED = ["method", "queryParams", "scheme", "authority", "port", "sourceLabels", "sourceNamespace",
                 "gateways", "withoutHeaders", "ignoreUriCase", "statPrefix"]
RESERVED = ["Host", "mm-vmodel-id", "Content-Length", "content-type", "transfer-encoding", "te", "connection",
            "X-MSM-Model", "x-envoy-upstream-rq-timeout-ms", "grpc-timeout"]

RULE_CASES: list[tuple[str, Callable[[dict], Any], list[str]]] = [
    ("rule-not-object", spec(http=["a"]), [f"{R}: not an object", f"{R}.route: at least one destination"]),
    ("rule-unknown", rule(when="now"), [f"{R}.when: unknown field"]),
    *((f"rule-{k}", rule(**{k: {}}), [f"{R}.{k}: not supported by msm: {why}"]) for k, why in RULE_REFUSED),
    ("name-not-string", rule(name=3), [f"{R}.name: a string"]),
    ("second-rule", lambda d: d["spec"]["http"].append({"timeout": "1s"}),
     ["spec.http[1].route: at least one destination"]),
    # match
    *((f"match-{k}", rule(match=[{"uri": {"prefix": "/"}}, {k: "x"}]),
       [f"{R}.match[1].{k}: not supported by msm: msm matches on uri and headers only"])
      for k in MATCH_REFUSED),
    ("match-not-object", rule(match=["x"]), [f"{R}.match[0]: not an object"]),
    ("match-unknown", rule(match=[{"path": "/"}]), [f"{R}.match[0].path: unknown field"]),
    ("uri-none-given", rule(match=[{"uri": {}}]), [f"{R}.match[0].uri: exactly one of exact, prefix, regex"]),
    ("uri-two-given", rule(match=[{"uri": {"exact": "/a", "prefix": "/"}}]),
     [f"{R}.match[0].uri: exactly one of exact, prefix, regex"]),
    ("uri-unknown-kind", rule(match=[{"uri": {"suffix": "/a"}}]),
     [f"{R}.match[0].uri.suffix: unknown field", f"{R}.match[0].uri: exactly one of exact, prefix, regex"]),
    ("uri-not-object", rule(match=[{"uri": "/a"}]),
     [f"{R}.match[0].uri: not an object", f"{R}.match[0].uri: exactly one of exact, prefix, regex"]),
    ("uri-not-string", rule(match=[{"uri": {"prefix": 5}}]), [f"{R}.match[0].uri.prefix: a string"]),
    ("uri-bad-regex", rule(match=[{"uri": {"regex": "a(?=b)"}}]),
     [f"{R}.match[0].uri.regex: not an RE2 regular expression (Envoy's engine): invalid perl operator: (?="]),
    ("headers-not-map", rule(match=[{"headers": ["x-a"]}]),
     [f"{R}.match[0].headers: a map of header names to matches"]),
    ("header-match-two",
     rule(match=[{"headers": {"X-B": {"exact": "1"}, "x-a": {"exact": "1", "regex": "1"}}}]),
     [f"{R}.match[0].headers.x-a: exactly one of exact, prefix, regex"]),
    ("header-match-not-string", rule(match=[{"headers": {"x-a": {"exact": 1}}}]),
     [f"{R}.match[0].headers.x-a.exact: a string"]),
    # route
    ("route-missing", lambda d: d["spec"]["http"][0].pop("route"), [f"{R}.route: at least one destination"]),
    ("route-empty", rule(route=[]), [f"{R}.route: at least one destination"]),
    ("route-not-list", rule(route={"destination": {"host": "a"}}), [f"{R}.route: at least one destination"]),
    ("route-entry-not-object", rule(route=["a"]),
     [f"{R}.route[0]: not an object", f"{R}.route[0].destination: not an object",
      f"{R}.route[0].destination.host: None {NOT_A_MODEL}"]),
    ("route-entry-unknown", rule(route=[{"destination": {"host": "a"}, "mirror": True}]),
     [f"{R}.route[0].mirror: unknown field"]),
    ("route-headers", rule(route=[{"destination": {"host": "a"}, "headers": {}}]),
     [f"{R}.route[0].headers: not supported by msm: set headers on the rule"]),
    ("destination-missing", rule(route=[{"weight": 100}]),
     [f"{R}.route[0].destination: not an object", f"{R}.route[0].destination.host: None {NOT_A_MODEL}"]),
    ("destination-subset", rule(route=[{"destination": {"host": "a", "subset": "v1"}}]),
     [f"{R}.route[0].destination.subset: not supported by msm: a model's revisions are msm's, not subsets"]),
    ("destination-port", rule(route=[{"destination": {"host": "a", "port": {"number": 80}}}]),
     [f"{R}.route[0].destination.port: not supported by msm: the gateway's ports are fixed (REST and gRPC)"]),
    ("destination-unknown", rule(route=[{"destination": {"host": "a", "name": "a"}}]),
     [f"{R}.route[0].destination.name: unknown field"]),
    ("destination-host", rule(route=[{"destination": {"host": "A"}}]),
     [f"{R}.route[0].destination.host: 'A' {NOT_A_MODEL}"]),
    ("weight-required", rule(route=two({"destination": {"host": "a"}}, ("b", 100))),
     [f"{R}.route[0].weight: {WEIGHT}"]),
    ("weight-over", rule(route=two(("a", 101), ("b", 0))), [f"{R}.route[0].weight: {WEIGHT}"]),
    ("weight-under", rule(route=two(("a", 101), ("b", -1))),
     [f"{R}.route[0].weight: {WEIGHT}", f"{R}.route[1].weight: {WEIGHT}"]),
    ("weight-bool", rule(route=[{"destination": {"host": "a"}, "weight": True}]),
     [f"{R}.route[0].weight: {WEIGHT}"]),
    ("weight-string", rule(route=two(("a", "50"), ("b", 50))), [f"{R}.route[0].weight: {WEIGHT}"]),
    ("weight-float", rule(route=two(("a", 50.0), ("b", 50))), [f"{R}.route[0].weight: {WEIGHT}"]),
    ("weights-sum-low", rule(route=two(("a", 60), ("b", 30))), [f"{R}.route: weights add up to 90, not 100"]),
    ("weights-sum-high", rule(route=two(("a", 60), ("b", 41))),
     [f"{R}.route: weights add up to 101, not 100"]),
    # the sum is not checked when a destination is refused already: it would only repeat that
    ("weights-sum-skipped", rule(route=two(("a", 60), ("B", 30))),
     [f"{R}.route[1].destination.host: 'B' {NOT_A_MODEL}"]),
    ("destination-twice", rule(route=two(("a", 50), ("a", 50))), [f"{R}.route: a model appears twice"]),
    # mirrors
    ("mirror-and-mirrors", rule(mirror={"host": "b"}, mirrors=[{"destination": {"host": "c"}}]),
     [f"{R}: mirror and mirrors together"]),
    ("mirror-not-object", rule(mirror="b"),
     [f"{R}.mirror: not an object", f"{R}.mirror.host: None {NOT_A_MODEL}"]),
    ("mirror-subset", rule(mirror={"host": "b", "subset": "v1"}),
     [f"{R}.mirror.subset: not supported by msm: a model's revisions are msm's"]),
    ("mirror-port", rule(mirror={"host": "b", "port": {"number": 80}}),
     [f"{R}.mirror.port: not supported by msm: fixed ports"]),
    ("mirror-unknown", rule(mirror={"host": "b", "weight": 1}), [f"{R}.mirror.weight: unknown field"]),
    ("mirror-host", rule(mirror={"host": "B"}), [f"{R}.mirror.host: 'B' {NOT_A_MODEL}"]),
    ("mirror-percentage-alone", rule(mirrorPercentage={"value": 5}),
     [f"{R}.mirrorPercentage: without mirror"]),
    ("mirror-percentage-over", rule(mirror={"host": "b"}, mirrorPercentage={"value": 100.5}),
     [f"{R}.mirrorPercentage.value: a percentage from 0 to 100"]),
    ("mirror-percentage-under", rule(mirror={"host": "b"}, mirrorPercentage={"value": -0.5}),
     [f"{R}.mirrorPercentage.value: a percentage from 0 to 100"]),
    ("mirror-percentage-bool", rule(mirror={"host": "b"}, mirrorPercentage={"value": True}),
     [f"{R}.mirrorPercentage.value: a percentage from 0 to 100"]),
    ("mirror-percentage-string", rule(mirror={"host": "b"}, mirrorPercentage={"value": "5"}),
     [f"{R}.mirrorPercentage.value: a percentage from 0 to 100"]),
    ("mirror-percentage-misspelt", rule(mirror={"host": "b"}, mirrorPercentage={"vaule": 5}),
     [f"{R}.mirrorPercentage.vaule: unknown field",
      f"{R}.mirrorPercentage.value: a percentage from 0 to 100"]),
    ("mirror-percentage-not-object", rule(mirror={"host": "b"}, mirrorPercentage=5),
     [f"{R}.mirrorPercentage: not an object", f"{R}.mirrorPercentage.value: a percentage from 0 to 100"]),
    ("mirrors-entry-not-object", rule(mirrors=["b"]),
     [f"{R}.mirrors[0]: not an object", f"{R}.mirrors[0].destination: not an object",
      f"{R}.mirrors[0].destination.host: None {NOT_A_MODEL}"]),
    ("mirrors-entry-unknown", rule(mirrors=[{"destination": {"host": "b"}, "weight": 1}]),
     [f"{R}.mirrors[0].weight: unknown field"]),
    ("mirrors-subset",
     rule(mirrors=[{"destination": {"host": "b"}}, {"destination": {"host": "c", "subset": "x"}}]),
     [f"{R}.mirrors[1].destination.subset: not supported by msm: a model's revisions are msm's"]),
    ("mirrors-port", rule(mirrors=[{"destination": {"host": "b", "port": {"number": 1}}}]),
     [f"{R}.mirrors[0].destination.port: not supported by msm: fixed ports"]),
    ("mirrors-host", rule(mirrors=[{"destination": {"host": "b_"}}]),
     [f"{R}.mirrors[0].destination.host: 'b_' {NOT_A_MODEL}"]),
    ("mirrors-percentage", rule(mirrors=[{"destination": {"host": "b"}, "percentage": {"value": 101}}]),
     [f"{R}.mirrors[0].percentage.value: a percentage from 0 to 100"]),
    # fault
    ("fault-empty", rule(fault={}), [f"{R}.fault: a delay or an abort"]),
    ("fault-not-object", rule(fault="abort"),
     [f"{R}.fault: not an object", f"{R}.fault: a delay or an abort"]),
    ("fault-unknown", rule(fault={"abort": {"httpStatus": 503}, "drop": {}}),
     [f"{R}.fault.drop: unknown field"]),
    ("delay-exponential", rule(fault={"delay": {"exponentialDelay": "1s"}}),
     [f"{R}.fault.delay.exponentialDelay: not supported by msm: Envoy's fault filter has fixed delays only",
      f"{R}.fault.delay: fixedDelay is required"]),
    ("delay-percent", rule(fault={"delay": {"fixedDelay": "1s", "percent": 5}}),
     [f"{R}.fault.delay.percent: not supported by msm: deprecated: use percentage"]),
    ("delay-unknown", rule(fault={"delay": {"fixedDelay": "1s", "jitter": "1s"}}),
     [f"{R}.fault.delay.jitter: unknown field"]),
    ("delay-not-object", rule(fault={"delay": "1s"}),
     [f"{R}.fault.delay: not an object", f"{R}.fault: a delay or an abort"]),
    ("delay-fixed-bad", rule(fault={"delay": {"fixedDelay": "soon"}}),
     [f"{R}.fault.delay.fixedDelay: 'soon' is not a duration like 1s or 250ms"]),
    ("delay-percentage", rule(fault={"delay": {"fixedDelay": "1s", "percentage": {"value": 200}}}),
     [f"{R}.fault.delay.percentage.value: a percentage from 0 to 100"]),
    ("abort-http2", rule(fault={"abort": {"http2Error": "REFUSED_STREAM"}}),
     [f"{R}.fault.abort.http2Error: not supported by msm: not supported by msm",
      f"{R}.fault.abort: exactly one of httpStatus, grpcStatus"]),
    ("abort-percent", rule(fault={"abort": {"httpStatus": 503, "percent": 5}}),
     [f"{R}.fault.abort.percent: not supported by msm: deprecated: use percentage"]),
    ("abort-unknown", rule(fault={"abort": {"httpStatus": 503, "body": "x"}}),
     [f"{R}.fault.abort.body: unknown field"]),
    ("abort-not-object", rule(fault={"abort": 503}),
     [f"{R}.fault.abort: not an object", f"{R}.fault: a delay or an abort"]),
    ("abort-both", rule(fault={"abort": {"httpStatus": 503, "grpcStatus": "UNAVAILABLE"}}),
     [f"{R}.fault.abort: exactly one of httpStatus, grpcStatus"]),
    ("abort-neither", rule(fault={"abort": {"percentage": {"value": 5}}}),
     [f"{R}.fault.abort: exactly one of httpStatus, grpcStatus"]),
    ("abort-status-low", rule(fault={"abort": {"httpStatus": 199}}),
     [f"{R}.fault.abort.httpStatus: an HTTP status from 200 to 599"]),
    ("abort-status-high", rule(fault={"abort": {"httpStatus": 600}}),
     [f"{R}.fault.abort.httpStatus: an HTTP status from 200 to 599"]),
    ("abort-status-bool", rule(fault={"abort": {"httpStatus": True}}),
     [f"{R}.fault.abort.httpStatus: an HTTP status from 200 to 599"]),
    ("abort-status-string", rule(fault={"abort": {"httpStatus": "503"}}),
     [f"{R}.fault.abort.httpStatus: an HTTP status from 200 to 599"]),
    ("abort-grpc-name", rule(fault={"abort": {"grpcStatus": "unavailable"}}),
     [f"{R}.fault.abort.grpcStatus: 'unavailable' is not a gRPC status name like UNAVAILABLE"]),
    ("abort-grpc-code", rule(fault={"abort": {"grpcStatus": 14}}),
     [f"{R}.fault.abort.grpcStatus: 14 is not a gRPC status name like UNAVAILABLE"]),
    ("abort-percentage", rule(fault={"abort": {"httpStatus": 503, "percentage": {"value": -1}}}),
     [f"{R}.fault.abort.percentage.value: a percentage from 0 to 100"]),
    # retries
    ("retries-not-object", rule(retries=3),
     [f"{R}.retries: not an object", f"{R}.retries.attempts: an integer from 0 to 10"]),
    ("retries-unknown", rule(retries={"attempts": 1, "on": "5xx"}), [f"{R}.retries.on: unknown field"]),
    ("retries-localities", rule(retries={"attempts": 1, "retryRemoteLocalities": True}),
     [f"{R}.retries.retryRemoteLocalities: not supported by msm: one locality here"]),
    ("retries-previous-hosts", rule(retries={"attempts": 1, "retryIgnorePreviousHosts": False}),
     [f"{R}.retries.retryIgnorePreviousHosts: not supported by msm: always on in msm"]),
    ("retries-backoff", rule(retries={"attempts": 1, "backoff": "1s"}),
     [f"{R}.retries.backoff: not supported by msm: Envoy's default backoff is used"]),
    ("attempts-missing", rule(retries={"retryOn": "5xx"}),
     [f"{R}.retries.attempts: an integer from 0 to 10"]),
    ("attempts-over", rule(retries={"attempts": 11}), [f"{R}.retries.attempts: an integer from 0 to 10"]),
    ("attempts-under", rule(retries={"attempts": -1}), [f"{R}.retries.attempts: an integer from 0 to 10"]),
    ("attempts-bool", rule(retries={"attempts": True}), [f"{R}.retries.attempts: an integer from 0 to 10"]),
    ("attempts-string", rule(retries={"attempts": "2"}), [f"{R}.retries.attempts: an integer from 0 to 10"]),
    ("per-try-timeout", rule(retries={"attempts": 2, "perTryTimeout": 5}),
     [f"{R}.retries.perTryTimeout: 5 is not a duration like 1s or 250ms"]),
    ("retry-on-not-string", rule(retries={"attempts": 2, "retryOn": ["5xx"]}),
     [f"{R}.retries.retryOn: a comma-separated string"]),
    ("retry-on-unknown", rule(retries={"attempts": 2, "retryOn": "5xx,on-a-whim,4xx"}),
     [f"{R}.retries.retryOn: 'on-a-whim' is not a retry condition Envoy knows",
      f"{R}.retries.retryOn: '4xx' is not a retry condition Envoy knows"]),
    # timeout
    ("timeout-word", rule(timeout="soon"), [f"{R}.timeout: 'soon' is not a duration like 1s or 250ms"]),
    ("timeout-number", rule(timeout=2), [f"{R}.timeout: 2 is not a duration like 1s or 250ms"]),
    ("timeout-days", rule(timeout="1d"), [f"{R}.timeout: '1d' is not a duration like 1s or 250ms"]),
    ("timeout-suffix", rule(timeout="1sec"), [f"{R}.timeout: '1sec' is not a duration like 1s or 250ms"]),
    ("timeout-prefix", rule(timeout="x1s"), [f"{R}.timeout: 'x1s' is not a duration like 1s or 250ms"]),
    # headers
    ("headers-not-object", rule(headers=["x"]), [f"{R}.headers: not an object"]),
    ("headers-unknown", rule(headers={"both": {}}), [f"{R}.headers.both: unknown field"]),
    ("headers-request-not-object", rule(headers={"request": "x"}), [f"{R}.headers.request: not an object"]),
    ("headers-response-unknown", rule(headers={"response": {"append": {}}}),
     [f"{R}.headers.response.append: unknown field"]),
    ("headers-set-not-map", rule(headers={"request": {"set": ["x-a"]}}),
     [f"{R}.headers.request.set: a map of header names to strings"]),
    ("headers-set-not-string", rule(headers={"request": {"set": {"x-a": "1", "x-b": 2}}}),
     [f"{R}.headers.request.set: a map of header names to strings"]),
    ("headers-add-key-not-string", rule(headers={"response": {"add": {1: "x"}}}),
     [f"{R}.headers.response.add: a map of header names to strings"]),
    ("headers-remove-not-list", rule(headers={"response": {"remove": "x-a"}}),
     [f"{R}.headers.response.remove: a list of header names"]),
    ("headers-remove-not-strings", rule(headers={"response": {"remove": ["x-a", 1]}}),
     [f"{R}.headers.response.remove: a list of header names"]),
    ("header-name-space", rule(headers={"request": {"set": {"x a": "1"}}}),
     [f"{R}.headers.request.set.x a: 'x a' is not a header name"]),
    ("header-name-colon", rule(headers={"request": {"remove": ["x-a", ":path"]}}),
     [f"{R}.headers.request.remove[1]: ':path' is not a header name"]),
    ("header-name-empty", rule(headers={"response": {"add": {"": "1"}}}),
     [f"{R}.headers.response.add.: '' is not a header name"]),
    ("header-name-too-long", rule(headers={"response": {"add": {"h" * 257: "1"}}}),
     [f"{R}.headers.response.add.{'h' * 257}: '{'h' * 257}' is not a header name"]),
    *((f"header-reserved-{h}", rule(headers={"request": {"set": {h: "1"}}}),
       [f"{R}.headers.request.set.{h}: '{h}' {GATEWAYS}"]) for h in RESERVED),
    ("header-reserved-remove", rule(headers={"response": {"remove": ["x-ok", "Grpc-Status"]}}),
     [f"{R}.headers.response.remove[1]: 'Grpc-Status' {GATEWAYS}"]),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_rule_refusals(edit: Callable[[dict], Any], expected: list[str]) -> None:
    assert refusal(edited(edit)) == expected


def test_every_problem_of_every_rule_is_said_in_document_order() -> None:
    doc = edited(lambda d: d["spec"].update(hosts=["ab", "X"], http=[
        {"route": [{"destination": {"host": "a"}}], "timeout": "soon", "retries": {"attempts": 11}},
        {"route": two(("a", 50), ("b", 40))}]))
    doc["kind"] = "Gateway"
    assert refusal(doc) == [
        "kind: 'Gateway', not VirtualService", f"spec.hosts[1]: 'X' {NOT_A_MODEL}",
        f"{R}.retries.attempts: an integer from 0 to 10",
        f"{R}.timeout: 'soon' is not a duration like 1s or 250ms",
        "spec.http[1].route: weights add up to 90, not 100"]


def only_rule(**fields: Any) -> HttpRule:
    (parsed,) = parse_virtual_service(edited(rule(**fields))).http
    return parsed


def test_the_smallest_virtualservice_read_whole() -> None:
    assert parse_virtual_service(BASE) == VirtualService(
        "team", "ab", ("ab",), (), (HttpRule("", (), (RouteDestination("a", 100),)),), None)
    no_ns = edited(lambda d: d["metadata"].pop("namespace"))
    assert parse_virtual_service(no_ns).namespace == "default"
    assert parse_virtual_service(no_ns, default_namespace="local").namespace == "local"


def test_fields_read_but_not_used_are_accepted() -> None:
    doc = edited(lambda d: d.update(status={"conditions": []}))
    doc["spec"].update(gateways=["istio-system/msm-model-gateway", "mesh"], exportTo=["*"])
    doc["metadata"]["annotations"] = {"team": "x"}
    vs = parse_virtual_service(doc)
    assert vs.gateways == ("istio-system/msm-model-gateway", "mesh") and vs.sticky_header is None


@pytest.mark.parametrize("host", ["a", "0", "a.b-c", "m" * 253])
def test_model_names_at_the_edges_are_hosts(host: str) -> None:
    assert parse_virtual_service(edited(spec(hosts=[host, "ab"]))).hosts == (host, "ab")


def test_the_sticky_header_is_read_lowercase() -> None:
    doc = edited(lambda d: d["metadata"].update(annotations={STICKY_ANNOTATION: "X-User-Id"}))
    assert parse_virtual_service(doc).sticky_header == "x-user-id"


def test_matches_keep_their_order_and_header_names_are_lowercase() -> None:
    r = only_rule(name="beta", match=[
        {"name": "first", "uri": {"exact": "/v2/models/ab/infer"},
         "headers": {"x-b": {"prefix": "1"}, "X-A": {"regex": "a|b"}}},
        {"headers": {"x-c": {"exact": ""}}}])
    assert r.name == "beta"
    assert r.matches == (
        HttpMatch(StringMatch(exact="/v2/models/ab/infer"),
                  (("x-a", StringMatch(regex="a|b")), ("x-b", StringMatch(prefix="1")))),
        HttpMatch(None, (("x-c", StringMatch(exact="")),)))
    # the order a document lists its headers in does not change what is read (nor the routes built)
    assert only_rule(match=[{"headers": {"x-a": {"exact": "1"}, "x-b": {"exact": "2"}}}]) == \
        only_rule(match=[{"headers": {"x-b": {"exact": "2"}, "x-a": {"exact": "1"}}}])


def test_weights_at_their_bounds_and_a_lone_destination() -> None:
    assert only_rule(route=two(("a", 0), ("b", 100))).route == (RouteDestination("a", 0),
                                                                 RouteDestination("b", 100))
    # as in Istio, a rule's only destination takes all of its traffic whatever its weight: a weight
    # of 0 there does not leave the rule without a destination
    for weight in (0, 40, 100):
        lone = [{"destination": {"host": "a"}, "weight": weight}]
        assert only_rule(route=lone).route == (RouteDestination("a", 100),)


def test_mirrors_and_their_percentages() -> None:
    assert only_rule(mirror={"host": "b"}).mirrors == (Mirror("b", 100.0),)
    assert only_rule(mirror={"host": "b"}, mirrorPercentage={"value": 0}).mirrors == (Mirror("b", 0.0),)
    assert only_rule(mirror={"host": "b"}, mirrorPercentage={"value": 100}).mirrors == (Mirror("b", 100.0),)
    mirrors = [{"destination": {"host": "b"}, "percentage": {"value": 2.5}}, {"destination": {"host": "c"}}]
    assert only_rule(mirrors=mirrors).mirrors == (Mirror("b", 2.5), Mirror("c", 100.0))


def test_faults() -> None:
    assert only_rule(fault={"delay": {"fixedDelay": "2s"}}).fault == Fault(2.0, 100.0, None, None, 100.0)
    assert only_rule(fault={"abort": {"httpStatus": 200, "percentage": {"value": 0}}}).fault == \
        Fault(None, 100.0, 200, None, 0.0)
    assert only_rule(fault={"abort": {"httpStatus": 599}}).fault == Fault(None, 100.0, 599, None, 100.0)
    assert only_rule(fault={"abort": {"grpcStatus": "OK"}}).fault == Fault(None, 100.0, None, 0, 100.0)
    both = {"delay": {"fixedDelay": "5ms", "percentage": {"value": 50}},
            "abort": {"grpcStatus": "UNAUTHENTICATED", "percentage": {"value": 1}}}
    assert only_rule(fault=both).fault == Fault(0.005, 50.0, None, 16, 1.0)


def test_retries_and_timeouts() -> None:
    assert only_rule(retries={"attempts": 0}).retries == Retries(0, None, ())
    most = {"attempts": 10, "perTryTimeout": "1m", "retryOn": " 5xx, ,reset,429,"}
    assert only_rule(retries=most).retries == Retries(10, 60.0, ("5xx", "reset", "429"))
    assert only_rule(timeout="1.5s").timeout_s == 1.5
    assert only_rule(timeout="20ms").timeout_s == pytest.approx(0.02)
    assert only_rule(timeout="3h").timeout_s == 10800.0
    assert only_rule(timeout="7ns").timeout_s == pytest.approx(7e-9)
    assert only_rule(timeout="7µs").timeout_s == pytest.approx(7e-6)
    assert only_rule().timeout_s is None and only_rule().retries is None and only_rule().fault is None


def test_header_operations_are_sorted_lowercase() -> None:
    r = only_rule(headers={"request": {"set": {"X-B": "2", "x-a": "1"}, "add": {"X-C": "3"},
                                       "remove": ["X-Debug", "x-trace"]},
                           "response": {"remove": ["Server"]}})
    assert r.request_headers == HeaderOps(set=(("x-a", "1"), ("x-b", "2")), add=(("x-c", "3"),),
                                          remove=("x-debug", "x-trace"))
    assert r.response_headers == HeaderOps(remove=("server",))
    token = "!#$%&'*+.^_`|~-" + "h" * 241  # every token character; 256 in all
    assert only_rule(headers={"response": {"set": {token: "v"}}}).response_headers == \
        HeaderOps(set=((token, "v"),))
    assert only_rule(headers={"request": {}}).request_headers == HeaderOps()


# ---------------------------------------------------------------------------------------------
# document_problems: msm's own problems first, then the CRD schema's at fields msm did not report


W = "vs.yaml doc 1 VirtualService/ab"


@pytest.mark.parametrize(("edit", "expected"), [
    (rule(match=[{"name": 7}]),
     [f"{W}: {R}.match[0].name must be of type string, got integer 7 (Istio CRD schema)"]),
    # the same field: msm's own message only
    (rule(timeout=5), [f"{W}: {R}.timeout: 5 is not a duration like 1s or 250ms"]),
    # fields inside the one msm reported (a key, an index): msm's message only
    (rule(headers={"request": {"set": {"x-a": 1}}}),
     [f"{W}: {R}.headers.request.set: a map of header names to strings"]),
    (rule(headers={"request": {"remove": ["x-a", 1]}}),
     [f"{W}: {R}.headers.request.remove: a list of header names"]),
    # msm's reason may itself hold a colon: the field is what comes before the first
    (spec(tcp="x"), [f"{W}: spec.tcp: not supported by msm: models are reached over HTTP and gRPC only"]),
    # one schema problem left out does not leave out the ones after it
    (lambda d: (d["spec"].update(hosts="ab"), d["spec"]["http"][0].update(match=[{"name": 7}])),
     [f"{W}: spec.hosts: at least one model name",
      f"{W}: {R}.match[0].name must be of type string, got integer 7 (Istio CRD schema)"]),
    # a field whose name merely starts like the one msm reported is the schema's to report
    (rule(fault={"abort": {"httpStatus": 7, "percentage": {"value": "a"}}}),
     [f"{W}: {R}.fault.abort.httpStatus: an HTTP status from 200 to 599",
      f"{W}: {R}.fault.abort.percentage.value: a percentage from 0 to 100"]),
])
def test_document_problems(edit: Callable[[dict], Any], expected: list[str]) -> None:
    assert document_problems(edited(edit), W) == expected


def test_document_problems_of_good_and_non_object_documents() -> None:
    assert document_problems(BASE, W) == []
    assert document_problems("text", W)[0] == f"{W}: VirtualService: not an object"


# ---------------------------------------------------------------------------------------------
# resolve_traffic: which VirtualService holds which host, and why the others cannot route


def vs(name: str, hosts: tuple[str, ...], *dests: str, ns: str = "team", sticky: str | None = None,
       mirror: str | None = None) -> VirtualService:
    weights = [100 // len(dests)] * len(dests)
    rules = (HttpRule("", (), tuple(RouteDestination(d, w) for d, w in zip(dests, weights, strict=True)),
                      (Mirror(mirror),) if mirror else ()),)
    return VirtualService(ns, name, hosts, (), rules, sticky)


MODELS = {"a": "team", "b": "team", "c": "team", "x": "other"}


def claim(v: VirtualService, order: int, file: str | None = None) -> Claim:
    source = f"{file or v.name + '.yaml'} doc 1"
    return Claim(v, source, file or f"{v.name}.yaml", (order,))


def test_accepted_virtualservices_become_each_hosts_policy() -> None:
    one, two_ = vs("one", ("ab", "a"), "a", "b", sticky="x-user"), vs("two", ("c2",), "c", ns="team")
    traffic, errors = resolve_traffic([claim(one, 0), claim(two_, 1)], MODELS)
    assert errors == {}
    assert traffic.services == {"team/one": one, "team/two": two_}
    assert traffic.sources == {"team/one": "one.yaml doc 1", "team/two": "two.yaml doc 1"}
    assert traffic.policies == {
        "ab": HostPolicy("ab", "VirtualService team/one", one.http, "x-user"),
        "a": HostPolicy("a", "VirtualService team/one", one.http, "x-user"),
        "c2": HostPolicy("c2", "VirtualService team/two", two_.http, None)}


def test_why_a_virtualservice_cannot_route_in_full() -> None:
    holder = vs("holder", ("ab",), "a")
    bad = vs("bad", ("ab", "x", "a"), "zz", "x", mirror="gone")
    traffic, errors = resolve_traffic([claim(holder, 0), claim(bad, 1)], MODELS)
    assert set(traffic.services) == {"team/holder"} and set(traffic.policies) == {"ab"}
    assert errors == {"bad.yaml": (
        "bad.yaml doc 1 VirtualService team/bad: "
        "host ab is already routed by VirtualService team/holder, which stays in use; "
        "host x is the InferenceService of namespace other; "
        "a VirtualService of namespace team cannot route it; "
        "http[0]: destination gone is not an InferenceService msm serves; "
        "http[0]: destination x is in namespace other; "
        "a VirtualService routes to its own namespace's models; "
        "http[0]: destination zz is not an InferenceService msm serves")}


def test_another_namespaces_model_name_is_refused_even_when_unclaimed() -> None:
    _, errors = resolve_traffic([claim(vs("steal", ("x",), "a"), 0)], MODELS)
    assert errors == {"steal.yaml": "steal.yaml doc 1 VirtualService team/steal: host x is the "
                                    "InferenceService of namespace other; a VirtualService of namespace team "
                                    "cannot route it"}
    traffic, errors = resolve_traffic([claim(vs("own", ("x",), "x", ns="other"), 0)], MODELS)
    assert errors == {} and set(traffic.policies) == {"x"}


def test_the_first_claim_in_order_holds_a_host() -> None:
    first, second = vs("first", ("ab",), "a"), vs("second", ("ab",), "b")
    traffic, errors = resolve_traffic([claim(second, 2), claim(first, 1)], MODELS)
    assert traffic.policies["ab"].source == "VirtualService team/first"
    assert errors == {"second.yaml": "second.yaml doc 1 VirtualService team/second: host ab is already "
                                     "routed by VirtualService team/first, which stays in use"}


def test_the_incumbent_keeps_its_host_whatever_the_order() -> None:
    first, second = vs("first", ("ab",), "a"), vs("second", ("ab", "cd"), "b")
    claims = [claim(first, 1), claim(second, 2)]
    traffic, errors = resolve_traffic(claims, MODELS, {"team/second": vs("second", ("ab",), "c")})
    assert traffic.policies["ab"].source == "VirtualService team/second" and set(errors) == {"first.yaml"}
    # an incumbent that held other hosts has no claim on these: the order decides
    traffic, errors = resolve_traffic(claims, MODELS, {"team/second": vs("second", ("zz",), "c")})
    assert traffic.policies["ab"].source == "VirtualService team/first" and set(errors) == {"second.yaml"}


def test_the_same_virtualservice_twice_keeps_the_first() -> None:
    one, again, later = vs("one", ("ab",), "a"), vs("one", ("cd",), "b"), vs("later", ("ef",), "c")
    claims = [claim(one, 0, "f1.yaml"), claim(again, 1, "f2.yaml"), claim(later, 2)]
    traffic, errors = resolve_traffic(claims, MODELS)
    assert traffic.services == {"team/one": one, "team/later": later}  # the claims after it are read
    assert errors == {"f2.yaml": "f2.yaml doc 1: VirtualService team/one is already defined in "
                                 "f1.yaml doc 1, which stays in use; this one is ignored"}


def test_a_broken_edit_keeps_the_previous_version_that_still_routes() -> None:
    previous, edit = vs("one", ("ab",), "a"), vs("one", ("ab",), "gone")
    traffic, errors = resolve_traffic([claim(edit, 0)], MODELS, {"team/one": previous})
    assert traffic.services == {"team/one": previous} and traffic.sources == {"team/one": "one.yaml doc 1"}
    assert traffic.policies["ab"].rules == previous.http
    assert errors == {"one.yaml": "one.yaml doc 1 VirtualService team/one: http[0]: destination gone is "
                                  "not an InferenceService msm serves; its previous version stays in use"}


def test_no_previous_version_when_it_cannot_route_either_or_is_the_same() -> None:
    gone = vs("one", ("ab",), "gone")
    message = ("one.yaml doc 1 VirtualService team/one: http[0]: destination gone is not an InferenceService "
               "msm serves")
    for incumbent in (vs("one", ("ab",), "a", "gone"), gone):
        traffic, errors = resolve_traffic([claim(gone, 0)], MODELS, {"team/one": incumbent})
        assert traffic.services == {} and traffic.policies == {} and errors == {"one.yaml": message}


def test_problems_of_one_file_are_joined_line_by_line() -> None:
    p, q = vs("p", ("ab",), "gone"), vs("q", ("cd",), "x")
    _, errors = resolve_traffic([claim(p, 0, "both.yaml"), claim(q, 1, "both.yaml")], MODELS)
    assert errors == {"both.yaml": (
        "both.yaml doc 1 VirtualService team/p: http[0]: destination gone is not an InferenceService "
        "msm serves\n"
        "both.yaml doc 1 VirtualService team/q: http[0]: destination x is in namespace other; "
        "a VirtualService routes to its own namespace's models")}
