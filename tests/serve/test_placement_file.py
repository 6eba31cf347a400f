"""The placement file of `msm serve`: what it accepts and how it reports what it does not."""

import textwrap

import pytest

from xds_server.placement_file import PlacementFileError, load_placement_file, parse_placement

GOOD = textwrap.dedent("""
    instances:
      a: {address: 127.0.0.1, rest_port: 9001, grpc_port: 9002}
      b: {address: 127.0.0.1, rest_port: 9011, grpc_port: 9012}
    models:
      - name: sklearn-mnist
        revisions:
          - {id: sklearn-mnist__v1, runtime: mlserver, copies: [a, b]}
          - {id: sklearn-mnist__v2, runtime: mlserver, copies: [b]}
        http:
          - match: {headers: {X-Canary: {exact: "yes"}}}
            route: [{revision: sklearn-mnist__v2}]
          - route:
              - {revision: sklearn-mnist__v1, weight: 90}
              - {revision: sklearn-mnist__v2, weight: 10}
            retries: 3
            timeout: 250ms
      - name: other
        revisions:
          - id: other__v1
            copies: [{instance: c, address: 127.0.0.2, rest_port: 7000, grpc_port: 7001}]
""")


def test_good_file_gives_the_view(tmp_path):
    f = tmp_path / "placement.yaml"
    f.write_text(GOOD)
    view = load_placement_file(f)
    m = view.models["sklearn-mnist"]
    assert [r.id for r in m.revisions] == ["sklearn-mnist__v1", "sklearn-mnist__v2"]
    assert [c.instance for c in m.revisions[0].copies] == ["a", "b"]
    assert m.revisions[1].copies[0].rest_port == 9011
    canary, split = m.rules
    assert canary.headers[0].name == "x-canary" and canary.headers[0].exact == "yes"
    assert [(d.revision, d.weight) for d in split.destinations] == [
        ("sklearn-mnist__v1", 90), ("sklearn-mnist__v2", 10)]
    assert split.retries == 3 and split.timeout_s == pytest.approx(0.25)
    assert view.models["other"].effective_rules()[0].destinations[0].revision == "other__v1"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"models": [{"name": "m", "revisions": [{"id": "m__1"}],
                      "http": [{"route": [{"revision": "nope"}]}]}]}, "'nope' is not a revision"),
        ({"models": [{"name": "m", "revisions": [{"id": "m__1"}, {"id": "m__2"}],
                      "http": [{"route": [{"revision": "m__1", "weight": 0},
                                          {"revision": "m__2", "weight": 0}]}]}]}, "weights add up to 0"),
        ({"models": [{"name": "m", "revisions": [{"id": "m__1"}, {"id": "m__2"}],
                      "http": [{"route": [{"revision": "m__1", "weight": -5},
                                          {"revision": "m__2", "weight": 5}]}]}]}, "non-negative integer"),
        ({"models": [{"name": "m", "revisions": [{"id": "m__1", "copies": ["ghost"]}]}]},
         "unknown instance 'ghost'"),
        ({"models": [{"name": "m", "revisions": [{"id": "m__1"}]},
                     {"name": "m", "revisions": [{"id": "x"}]}]},
         "defined twice"),
        ({"instances": {"a": {"address": "h", "rest_port": 70000, "grpc_port": 1}}, "models": []},
         "port must be an integer"),
        ({"models": [{"name": "m", "revisions": [{"id": "m__1"}], "http": [{"route": [{"revision": "m__1"}],
                                                                             "timeout": "5"}]}]},
         "needs a unit"),
        ({"models": [{"revisions": [{"id": "m__1"}]}]}, "'name' is required"),
        ({"models": [{"name": "m", "revisions": [{"id": "m__1"}],  # refused, never silently ignored
                      "http": [{"route": [{"revision": "m__1"}], "mirror": "m__1"}]}]},
         r"unknown field\(s\) mirror"),
        (["not", "a", "mapping"], "top level must be a mapping"),
    ],
)
def test_bad_input_names_the_problem(doc, message):
    with pytest.raises(PlacementFileError, match=message):
        parse_placement(doc)


def test_invalid_yaml_is_reported_with_the_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("models: [\n")
    with pytest.raises(PlacementFileError, match=r"p\.yaml: not valid YAML"):
        load_placement_file(f)
