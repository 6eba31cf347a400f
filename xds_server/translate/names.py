"""Names of the translated Envoy resources; the single place that spells them."""

from __future__ import annotations

import zlib

from xds_server.translate.options import GatewayOptions

REST = "rest"
GRPC = "grpc"
KINDS = (REST, GRPC)
# Scoped RDS delivers every scope to every listener on the ADS stream, so the two listeners' scope
# keys must differ: the second key fragment is the first path element each listener's requests
# carry (/v2/models/<name>/... and /inference.GRPCInferenceService/<method>).
SCOPE_TAG = {REST: "v2", GRPC: "inference.GRPCInferenceService"}

LISTENER = {REST: "msm_rest", GRPC: "msm_grpc"}
VHOST = {REST: "rest", GRPC: "grpc"}  # route stats: vhost.<vhost>.route.msm_<revision>.*
ROUTE_STAT_PREFIX = "msm_"  # route stat_prefix msm_<revision>; placement/control/gateway_stats.py parses it
MODEL_HEADER = "mm-vmodel-id"
#: set by the gateway on requests it sends to the activator: the model to make ready, and the
#: revision the request was routed to (the activator's replay goes back to that revision)
ACTIVATE_HEADER = "x-msm-model"
REVISION_HEADER = "x-msm-revision"
#: set by the activator on the request it replays through the gateway
ACTIVATED_HEADER = "x-msm-activated"
#: a direct replay: the activator sends a held request to the copy whose load just returned, before
#: the routes name it. It carries the view's ``ActivatorEndpoint.replay_token`` in REPLAY_TOKEN_HEADER
#: (a route matches it exactly: no client can pick its copy) and the copy's address, base64 of
#: ``ip:port``, in COPY_HEADER[kind] for the runtime port the route's upstream speaks; the gateway
#: removes all three before the copy sees the request
REPLAY_TOKEN_HEADER = "x-msm-replay-token"
COPY_HEADER = {"rest": "x-msm-copy-rest", "grpc": "x-msm-copy-grpc"}
#: set by the gateway on requests it routes to a copy (with ACTIVATE_HEADER and REVISION_HEADER):
#: the model name the client called. Should every copy fail to take the request, the gateway's
#: retry goes to the activator (the fallback cluster), which reads where it was going from these.
FALLBACK_HEADER = "x-msm-fallback"
#: a sticky split's bucket (0..9999) of the request's key header, set by the sticky Lua filter
BUCKET_HEADER = "x-msm-bucket"
#: mirrors: the gateway sends a rule's shadow requests to its own internal listener, naming the
#: model that takes them in this header; that listener's routes send them on to the model
MIRROR_HEADER = "x-msm-mirror"
MIRROR_LISTENER = "msm_mirror"
MIRROR_ROUTE = "msm_mirror"


def mirror_cluster(kind: str) -> str:
    return f"mirror_{kind}"


#: route metadata of routes whose requests the gateway reports to msm (access log service):
#: filter_metadata[MEASURE_METADATA][MEASURE_KEY] = true
MEASURE_METADATA = "msm.measure"
MEASURE_KEY = "on"
#: the cluster to the control plane's access log service (MeshView.measure)
MEASURE_CLUSTER = "msm_measure"


def route_name(model: str, rule: int, variant: str, revision: str, suffix: str = "") -> str:
    """``<model>/<rule>/<variant>/<revision>[/<suffix>]``: neither model nor revision has a ``/``."""
    return f"{model}/{rule}/{variant}/{revision}" + (f"/{suffix}" if suffix else "")


def revision_of_route(name: str) -> str | None:
    """The revision a route (of :func:`route_name`, or a mirror route) sends to, or None."""
    parts = name.split("/")
    return parts[3] if len(parts) >= 4 and parts[3] else None
SUBSET_KEY = "rev"  # endpoint metadata key (filter "envoy.lb") listing the revisions a host holds
LB_METADATA = "envoy.lb"


def flat_route_config(kind: str) -> str:
    return LISTENER[kind]


def scoped_route_config(kind: str, model: str) -> str:
    """Name of a model's own RouteConfiguration (and of its ScopedRouteConfiguration)."""
    return f"{LISTENER[kind]}/{model}"


def revision_cluster(kind: str, revision_id: str) -> str:
    return f"rev_{kind}_{revision_id}"


def runtime_cluster(kind: str, runtime: str, shard: int) -> str:
    return f"rt_{kind}_{runtime}_{shard}"


def activator_cluster(kind: str) -> str:
    return f"activator_{kind}"


def direct_cluster(kind: str, runtime: str) -> str:
    """Every instance of ``runtime``: where the activator's direct replays go (routes' direct routes)."""
    return f"direct_{kind}_{runtime}"


def fallback_cluster(primary: str) -> str:
    """The aggregate cluster that tries ``primary``'s copies first, then the activator."""
    return f"fb_{primary}"


def shard_of(model: str, shards: int) -> int:
    """Stable shard of a model (crc32 of its name), so a model's revisions share a shard."""
    return zlib.crc32(model.encode()) % shards if shards > 1 else 0


def cluster_for(kind: str, model: str, revision_id: str, runtime: str, opts: GatewayOptions) -> str:
    if opts.cluster_layout == "per_revision":
        return revision_cluster(kind, revision_id)
    return runtime_cluster(kind, runtime, shard_of(model, opts.subset_shards))

#: Endpoint metadata namespace Envoy's transport_socket_matches read (Istio's auto mTLS marks).
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
