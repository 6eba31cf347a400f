"""The gateway's inference data path: HTTP filters that make Envoy speak both V2 REST bodies.

REST listener, in order (see docs/data-path.md for the why):

1. ``msm.classify_body`` (Lua, ``envoy/lua/classify_body.lua``): on ``POST …/infer``, a
   standard V2 REST body (``inputs[].data``) gets the header ``x-msm-body: data`` and the route
   is looked up again; the route that matches that header goes to the runtime's REST port with
   transcoding off. Other bodies (the article's ``inputs[].contents``) go on to
2. ``envoy.filters.http.grpc_json_transcoder``: JSON → gRPC ``ModelInfer`` to the runtime's gRPC
   port, and the gRPC answer back to JSON (camelCase, as in the article);
3. ``msm.model_rewrite`` (Lua, ``envoy/lua/rewrite_model.lua``): the model name in field 1 of the
   gRPC request message becomes the route's target revision id (route metadata);
4. ``envoy.filters.http.stateful_session``, off except on the routes of the activator's direct
   replays, where it picks the copy the replay names (docs/gateway.md);
5. the router.

gRPC listener: ``msm.model_rewrite``, the stateful session filter, then the router. No Python
runs per request.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.stateful_session.v3 import stateful_session_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.http.stateful_session.header.v3 import header_pb2 as session_header_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, path_pb2, regex_pb2, string_pb2
from google.protobuf import descriptor_pb2, wrappers_pb2
from google.protobuf.descriptor import FileDescriptor
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from xds_server.assets import envoy_asset
from xds_server.translate import names
from xds_server.translate.common import pack

REST_BODY_HEADER = "x-msm-body"
REST_BODY_DATA = "data"

CLASSIFY_FILTER = "msm.classify_body"
TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
REWRITE_FILTER = "msm.model_rewrite"
ROUTER_FILTER = "envoy.filters.http.router"
FAULT_FILTER = "envoy.filters.http.fault"  # configured per route (a VirtualService's fault)
STICKY_FILTER = "msm.sticky"  # off, but on routes of sticky splits (route metadata names the header)
# off, but on the activator's direct-replay routes: sends the request to the host a header names
DIRECT_FILTER = "envoy.filters.http.stateful_session"
STICKY_HEADER_KEY = "header"
TARGET_KEY = "target"  # route metadata: filter_metadata[REWRITE_FILTER][TARGET_KEY] = revision id
INFERENCE_SERVICE = "inference.GRPCInferenceService"
INFERENCE_ONLY_FILTER = "msm.inference_only"
#: What the gateway lets through: inference and its read-only companions. The runtimes'
#: repository API (RepositoryIndex, RepositoryModelLoad / Unload, /v2/repository/...) and every
#: other service or path is refused at the gateway (HTTP 403, gRPC PERMISSION_DENIED).
GRPC_METHODS = ("ModelInfer", "ModelReady", "ModelMetadata", "ServerLive", "ServerReady", "ServerMetadata")
#: /v2/models/{name}[/versions/{version}][/infer | /ready] (model metadata is the bare path)
REST_PATHS = r"^/v2/models/[^/]+(/versions/[^/]+)?(/infer|/ready)?$"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


@cache
def lua_source(name: str) -> str:
    """A Lua script shipped in ``envoy/lua/``."""
    return envoy_asset("lua", name).read_text(encoding="utf-8")


def _lua_filter(filter_name: str, script: str, clear_route_cache: bool) -> hcm.HttpFilter:
    cfg = lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string=lua_source(script)),
        clear_route_cache=wrappers_pb2.BoolValue(value=clear_route_cache),
    )
    return hcm.HttpFilter(name=filter_name, typed_config=pack(cfg))


@cache
def inference_descriptor_set() -> bytes:
    """A serialized FileDescriptorSet of ``inference_v2.proto`` and its imports, dependencies first."""
    from xds_server.protos import inference_v2_pb2

    files: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def add(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        fdp = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(fdp)
        files.append(fdp)

    add(inference_v2_pb2.DESCRIPTOR)
    return descriptor_pb2.FileDescriptorSet(file=files).SerializeToString()


def transcoder_config(opts: Any = None) -> transcoder_pb2.GrpcJsonTranscoder:
    """REST → gRPC for ``inference.GRPCInferenceService``; routes keep matching the REST path."""
    limit = int(getattr(opts, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES))
    return transcoder_pb2.GrpcJsonTranscoder(
        proto_descriptor_bin=inference_descriptor_set(),
        services=[INFERENCE_SERVICE],
        match_incoming_request_route=True,
        # protobuf's JSON defaults: lowerCamelCase names, int64 as strings, unset fields omitted,
        # which is the article's response ("modelName", "int64Contents": ["8"], "shape": ["1", "1"])
        print_options=transcoder_pb2.GrpcJsonTranscoder.PrintOptions(
            add_whitespace=False,
            always_print_primitive_fields=False,
            always_print_enums_as_ints=False,
            preserve_proto_field_names=False,
        ),
        # a gRPC error becomes an HTTP status with a JSON google.rpc.Status-shaped body
        convert_grpc_status=True,
        max_request_body_size=wrappers_pb2.UInt32Value(value=min(limit, 2**32 - 1)),
        max_response_body_size=wrappers_pb2.UInt32Value(value=min(limit, 2**32 - 1)),
    )


def _skip_when_marked(
        transcoder: transcoder_pb2.GrpcJsonTranscoder) -> extension_matcher_pb2.ExtensionWithMatcher:
    """The transcoder, skipped for requests that carry ``x-msm-body: data``.

    The match runs on the headers as the transcoder receives them, i.e. after the classifier
    marked them. A per-route ``FilterConfig{disabled}`` cannot do this: which filters run is fixed
    when the filter chain is built, from the route chosen before the body was read.
    """
    marked = matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
        input=xds_extension_pb2.TypedExtensionConfig(
            name="msm.body_header",
            typed_config=pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=REST_BODY_HEADER))),
        value_match=xds_string_pb2.StringMatcher(exact=REST_BODY_DATA),
    )
    skip = matcher_pb2.Matcher.OnMatch(action=xds_extension_pb2.TypedExtensionConfig(
        name="msm.skip_transcoder", typed_config=pack(skip_action_pb2.SkipFilter())))
    return extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=matcher_pb2.Matcher(matcher_list=matcher_pb2.Matcher.MatcherList(matchers=[
            matcher_pb2.Matcher.MatcherList.FieldMatcher(
                predicate=matcher_pb2.Matcher.MatcherList.Predicate(single_predicate=marked), on_match=skip),
        ])),
        extension_config=extension_pb2.TypedExtensionConfig(
            name=TRANSCODER_FILTER, typed_config=pack(transcoder)),
    )


def _inference_only(kind: str) -> hcm.HttpFilter:
    """An RBAC filter that allows the inference paths of the listener ``kind`` and nothing else."""
    if kind == "grpc":
        paths = [string_pb2.StringMatcher(exact=f"/{INFERENCE_SERVICE}/{m}") for m in GRPC_METHODS]
    else:
        paths = [string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=REST_PATHS))]
    policy = rbac_pb2.Policy(
        permissions=[rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=p)) for p in paths],
        principals=[rbac_pb2.Principal(any=True)])
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"inference": policy})
    cfg = rbac_filter_pb2.RBAC(rules=rules)
    return hcm.HttpFilter(name=INFERENCE_ONLY_FILTER, typed_config=pack(cfg))


def _router() -> hcm.HttpFilter:
    return hcm.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_pb2.Router()))


def rest_http_filters(opts: Any = None) -> list[hcm.HttpFilter]:
    """HCM filters of the REST listener: inference paths only, classify, transcode, rewrite the
    model name, route."""
    return [
        _inference_only("rest"),
        _sticky(),  # before the classifier: both look the route up again, the bucket first
        # marks `data` bodies and clears the route cache so the REST-port route matches
        _lua_filter(CLASSIFY_FILTER, "classify_body.lua", clear_route_cache=True),
        _fault(),  # on the final route, before transcoding: an abort answers the REST client
        # skipped for bodies the classifier marked
        hcm.HttpFilter(name=TRANSCODER_FILTER,
                       typed_config=pack(_skip_when_marked(transcoder_config(opts)))),
        # must not re-route: after transcoding the path is /inference.GRPCInferenceService/…
        _lua_filter(REWRITE_FILTER, "rewrite_model.lua", clear_route_cache=False),
        _direct(),
        _router(),
    ]


def grpc_http_filters(opts: Any = None) -> list[hcm.HttpFilter]:
    """HCM filters of the gRPC listener: inference methods only, rewrite the model name, route."""
    return [_inference_only("grpc"), _sticky(), _fault(),
            _lua_filter(REWRITE_FILTER, "rewrite_model.lua", clear_route_cache=False), _direct(), _router()]


STICKY_SOURCE = "sticky"  # the script's name in the filter's source_codes


def mirror_http_filters() -> list[hcm.HttpFilter]:
    """HCM filters of the internal mirror listener: rewrite the gRPC model name, route."""
    return [_lua_filter(REWRITE_FILTER, "rewrite_model.lua", clear_route_cache=False), _router()]


def _sticky() -> hcm.HttpFilter:
    """Off unless a route turns it on (:func:`sticky_per_route`): most routes never pay for it."""
    source = base_pb2.DataSource(inline_string=lua_source("sticky_bucket.lua"))
    cfg = lua_pb2.Lua(default_source_code=source, source_codes={STICKY_SOURCE: source},
                      clear_route_cache=wrappers_pb2.BoolValue(value=True))
    return hcm.HttpFilter(name=STICKY_FILTER, typed_config=pack(cfg), disabled=True)


@cache
def _sticky_on() -> Any:
    return pack(rc.FilterConfig(config=pack(lua_pb2.LuaPerRoute(name=STICKY_SOURCE))))


def sticky_per_route() -> dict[str, Any]:
    """``Route.typed_per_filter_config`` entries that turn the sticky filter on for a route."""
    return {STICKY_FILTER: _sticky_on()}


def sticky_metadata(header: str) -> base_pb2.Metadata:
    m = base_pb2.Metadata()
    m.filter_metadata[STICKY_FILTER].update({STICKY_HEADER_KEY: header})
    return m


def _direct() -> hcm.HttpFilter:
    """Envoy's stateful session filter, off unless a route turns it on (:func:`direct_per_route`)."""
    return hcm.HttpFilter(name=DIRECT_FILTER, typed_config=pack(stateful_session_pb2.StatefulSession()),
                          disabled=True)


@cache
def direct_per_route(upstream: str) -> dict[str, Any]:
    """``Route.typed_per_filter_config`` entries of a direct-replay route whose upstream speaks
    ``upstream`` (names.REST or names.GRPC): the host is the one ``names.COPY_HEADER[upstream]``
    names, and a request whose host is not in the cluster fails (strict) rather than going to
    another, which may not hold the revision."""
    state = extension_pb2.TypedExtensionConfig(
        name="envoy.http.stateful_session.header",
        typed_config=pack(session_header_pb2.HeaderBasedSessionState(name=names.COPY_HEADER[upstream])))
    session = stateful_session_pb2.StatefulSession(session_state=state, strict=True)
    per_route = stateful_session_pb2.StatefulSessionPerRoute(stateful_session=session)
    return {DIRECT_FILTER: pack(rc.FilterConfig(config=pack(per_route)))}


def _fault() -> hcm.HttpFilter:
    """Envoy's fault filter with nothing to inject: routes whose rule has a fault configure it."""
    return hcm.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault_pb2.HTTPFault()))


def route_target_metadata(revision_id: str) -> base_pb2.Metadata:
    """Route metadata naming the revision the runtime knows the model by (read by the rewrite Lua)."""
    m = base_pb2.Metadata()
    m.filter_metadata[REWRITE_FILTER].update({TARGET_KEY: revision_id})
    return m


def transcoding_per_route(enabled: bool) -> dict[str, Any]:
    """``Route.typed_per_filter_config`` entries for a REST-listener route.

    ``enabled``: the route sends ``…/infer`` to a runtime's gRPC port; every filter runs.
    Otherwise (REST-port routes: ``data`` bodies, ready, metadata) the transcoder is off, and
    so is the classifier, which has nothing to decide there.
    """
    if enabled:
        return {}
    off = pack(rc.FilterConfig(disabled=True))
    return {CLASSIFY_FILTER: off, TRANSCODER_FILTER: off}
