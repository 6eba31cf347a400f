from placement.control.gateway_stats import increments, parse_route_totals, route_stat_prefix


def test_route_totals_are_summed_per_revision_across_listeners():
    stats = {"stats": [
        {"name": f"vhost.rest.route.{route_stat_prefix('m__isvc-1')}.upstream_rq_total", "value": 5},
        {"name": f"vhost.grpc.route.{route_stat_prefix('m__isvc-1')}.upstream_rq_total", "value": 2},
        {"name": f"vhost.rest.route.{route_stat_prefix('n__isvc-2')}.upstream_rq_total", "value": 1},
        {"name": "vhost.rest.route.other.upstream_rq_total", "value": 99},
        {"name": "cluster.x.upstream_rq_total", "value": 99},
    ]}
    assert parse_route_totals(stats) == {"m__isvc-1": 7, "n__isvc-2": 1}


def test_increments_handle_growth_new_revisions_and_an_envoy_restart():
    assert increments({"a": 5, "b": 3}, {"a": 8, "b": 3, "c": 2}) == {"a": 3, "c": 2}
    assert increments({"a": 50}, {"a": 4}) == {"a": 4}  # counter reset: Envoy restarted
