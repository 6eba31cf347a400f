"""msm's verdict on a regex is Envoy's: each pattern below is also given to ``envoy --mode validate``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from envoy_check import validate_command

from xds_server.mesh_view import Destination, HeaderMatch, Model, Revision, RouteRule, check_model
from xds_server.regex_check import regex_problem

PATTERNS = ["x-user-[0-9]+", "a{1,40}", ".*(canary|beta)$", "a{1,100}", "(a|b|c|d|e|f){1,30}", "(?=x)y",
            r"(\w)\1", "(unclosed"]


def _bootstrap(regex: str) -> dict:
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    route = {"match": {"prefix": "/", "headers": [{"name": "x-user", "string_match": {"safe_regex": {
        "regex": regex}}}]}, "direct_response": {"status": 200}}
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "x", "http_filters": [router],
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]}}
    return {"static_resources": {"listeners": [{
        "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}]}]}}


@pytest.mark.parametrize("pattern", PATTERNS)
def test_msm_refuses_exactly_what_envoy_refuses(pattern: str, tmp_path: Path) -> None:
    path = tmp_path / "boot.json"
    path.write_text(json.dumps(_bootstrap(pattern)))
    envoy = subprocess.run(validate_command(path), capture_output=True, text=True, timeout=60)
    assert (regex_problem(pattern) is None) == (envoy.returncode == 0), (regex_problem(pattern), envoy.stderr)


def test_a_placement_rule_with_a_regex_envoy_refuses_is_a_problem_of_its_model() -> None:
    rule = RouteRule(headers=(HeaderMatch(name="x-user", regex="a{1,100}"),),
                     destinations=(Destination(revision="m-1", weight=100),))
    problems = check_model(Model(name="m", revisions=(Revision(id="m-1"),), rules=(rule,)))
    expected = "rule 0: header 'x-user' regex 'a{1,100}': too complex for Envoy"
    assert any(expected in p for p in problems), problems
