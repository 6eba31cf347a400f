"""Make-before-break endpoints: the union of what a client holds and a snapshot's assignment."""

from __future__ import annotations

from xds_client import cla

from xds_server import resource_types as rt
from xds_server.snapshot import Resource, Snapshot


def _hosts(res: Resource) -> list[int]:
    return sorted(ep.endpoint.address.socket_address.port_value
                  for loc in res.message.endpoints for ep in loc.lb_endpoints)


def test_a_union_keeps_the_dropped_hosts_and_covers_both_versions():
    old = Snapshot.build({rt.ENDPOINT: {"c": cla("c", 1001, 1002)}})
    new = Snapshot.build({rt.ENDPOINT: {"c": cla("c", 1002, 1003)}}, previous=old)
    held = old.get(rt.ENDPOINT)["c"]
    union = new.endpoints_union("c", held)
    assert _hosts(union) == [1001, 1002, 1003]
    assert union.covers == {held.version, new.get(rt.ENDPOINT)["c"].version}
    assert new.endpoints_union("c", held) is union  # built once per snapshot, shared by streams


def test_a_held_union_that_covers_the_assignment_is_kept_as_it_is():
    """A client holding the union of v1 and v2 is not sent a re-made union while the snapshots
    that follow keep v2 (each snapshot used to merge again, for every such cluster, on every
    stream's first response: milliseconds on the cold path)."""
    old = Snapshot.build({rt.ENDPOINT: {"c": cla("c", 1001)}})
    new = Snapshot.build({rt.ENDPOINT: {"c": cla("c", 1002)}}, previous=old)
    union = new.endpoints_union("c", old.get(rt.ENDPOINT)["c"])
    later = Snapshot.patch(new, {rt.ENDPOINT: {"other": cla("other", 1009)}})
    assert later.get(rt.ENDPOINT)["c"] is new.get(rt.ENDPOINT)["c"]
    assert later.endpoints_union("c", union) is union
    # a pure resource of the same version is the assignment itself
    assert later.endpoints_union("c", new.get(rt.ENDPOINT)["c"]) is new.get(rt.ENDPOINT)["c"]


def test_a_held_union_is_merged_again_when_the_assignment_moves_on():
    s1 = Snapshot.build({rt.ENDPOINT: {"c": cla("c", 1001)}})
    s2 = Snapshot.build({rt.ENDPOINT: {"c": cla("c", 1002)}}, previous=s1)
    union = s2.endpoints_union("c", s1.get(rt.ENDPOINT)["c"])
    s3 = Snapshot.build({rt.ENDPOINT: {"c": cla("c", 1003)}}, previous=s2)
    again = s3.endpoints_union("c", union)
    assert _hosts(again) == [1001, 1002, 1003]
    assert again.covers == union.covers | {s3.get(rt.ENDPOINT)["c"].version}
