"""The ``msm`` command: argument parsing and dispatch to the programs (nothing else)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from msm.running import run_until_signalled

DEFAULT_XDS_PORT = 18000
DEFAULT_ADMIN_PORT = 18001
DEFAULT_REST_PORT = 8008
DEFAULT_GRPC_PORT = 8033
TOKEN_HELP = ("a file holding the secret the gateway presents to the xDS server (msm serve: streams "
              "without it are refused; envoy-bootstrap: put it in the bootstrap)")


def gateway_options(args: argparse.Namespace):
    """The gateway's ports and cluster layout, from the flags of ``_add_gateway_args``."""
    from xds_server.translate import GatewayOptions

    kwargs = {"rest_port": args.rest_port, "grpc_port": args.grpc_port}
    if getattr(args, "cluster_layout", None):
        kwargs["cluster_layout"] = args.cluster_layout
    if getattr(args, "subset_shards", None) is not None:
        kwargs["subset_shards"] = args.subset_shards
    if getattr(args, "direct_replay", True) is False:
        kwargs["direct_replay"] = False
    try:
        return GatewayOptions(**kwargs)
    except ValueError as e:
        raise SystemExit(f"msm {args.command}: {e}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from msm.serve import PlacementFileServer
    from msm.xds_stack import read_gateway_token

    server = PlacementFileServer(Path(args.placement), gateway_options(args),
                                 gateway_token=read_gateway_token(args.gateway_token_file))

    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        from xds_server.server import ServerTls

        if not (args.tls_cert and args.tls_key):
            print("msm serve: --tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        tls = ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)

    async def start() -> None:
        port = await server.start(args.xds_host, args.xds_port, args.admin_port, tls)
        mode = "" if tls is None else " over mTLS" if tls.client_ca else " over TLS"
        print(f"msm serve: xDS (ADS, SotW and delta){mode} on {args.xds_host}:{port}; "
              f"metrics and status on http://127.0.0.1:{args.admin_port}/metrics", flush=True)
        if server.last_error:
            print(f"msm serve: placement file rejected: {server.last_error}", file=sys.stderr, flush=True)

    return asyncio.run(run_until_signalled(start, server.stop))


def cmd_envoy_bootstrap(args: argparse.Namespace) -> int:
    from msm.xds_stack import read_gateway_token
    from xds_server.bootstrap import XdsClientTls, render_bootstrap

    tls = None
    if args.xds_ca:
        tls = XdsClientTls(ca=args.xds_ca, cert=args.xds_cert, key=args.xds_key, sni=args.xds_sni)
    elif args.xds_cert or args.xds_key:
        print("msm envoy-bootstrap: --xds-cert/--xds-key need --xds-ca (the CA of the xDS server)",
              file=sys.stderr)
        return 2
    sys.stdout.write(render_bootstrap(node_id=args.node_id, xds_host=args.xds_host,
                                      xds_port=args.xds_port, admin_port=args.envoy_admin_port,
                                      gateway_token=read_gateway_token(args.gateway_token_file),
                                      xds_tls=tls))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from msm.up import run_local_mesh

    return run_local_mesh(args)


def cmd_control_plane(args: argparse.Namespace) -> int:
    from msm.control_plane import run_control_plane

    return run_control_plane(args, gateway_options(args))


def cmd_kube_control_plane(args: argparse.Namespace) -> int:
    from msm.kube_control_plane import run_kube_control_plane

    return run_kube_control_plane(args, gateway_options(args))


def cmd_dev_cluster(args: argparse.Namespace) -> int:
    from msm.dev_cluster import run_dev_cluster

    return run_dev_cluster(args)


def cmd_status(args: argparse.Namespace) -> int:
    url = f"http://127.0.0.1:{args.admin_port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            status = json.load(r)
    except (urllib.error.URLError, OSError) as e:
        print(f"msm status: no control plane at {url} ({e}); is `msm up` running?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    from msm.status_text import format_status

    print(format_status(status))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from msm.up import validate_dir

    return validate_dir(Path(args.dir), args.pvc)


def _add_gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT, help="gateway REST port (8008)")
    p.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="gateway gRPC port (8033)")
    p.add_argument("--cluster-layout", choices=["per_revision", "subset"], default=None,
                   help="Envoy cluster layout (default: the one chosen by bench/envoy_memory.py)")
    p.add_argument("--subset-shards", type=int, default=None,
                   help="runtime clusters per runtime in the subset layout (default 64, see docs/gateway.md)")
    p.add_argument("--no-direct-replay", dest="direct_replay", action="store_false",
                   help="the activator replays a cold request only once the gateway's routes name its new "
                        "copy (default: at once, to that copy; docs/placement.md, 'Load on demand')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msm",
                                     description="Model Service Mesh: model-aware routing for Envoy")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the xDS server from a placement file (YAML) that it watches")
    p.add_argument("placement", help="placement file: models, revisions, copies, traffic rules")
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT, help="metrics and status port")
    p.add_argument("--gateway-token-file", default=None, metavar="FILE",
                   help=TOKEN_HELP)
    p.add_argument("--tls-cert", metavar="PEM", help="serve xDS over TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="... and this private key")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="require client certificates signed by this CA (mTLS); clients are shown by identity")
    _add_gateway_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("envoy-bootstrap", help="print the bootstrap a standalone Envoy gateway starts with")
    p.add_argument("--node-id", default="msm-gateway")
    p.add_argument("--xds-host", default="127.0.0.1")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument("--envoy-admin-port", type=int, default=9901)
    p.add_argument("--gateway-token-file", default=None, metavar="FILE",
                   help=TOKEN_HELP)
    p.add_argument("--xds-ca", metavar="PEM", help="reach the xDS server over TLS, trusting this CA")
    p.add_argument("--xds-cert", metavar="PEM", help="the gateway's client certificate (mTLS)")
    p.add_argument("--xds-key", metavar="PEM", help="... and its private key")
    p.add_argument("--xds-sni", metavar="NAME", help="server name to ask for (default: none)")
    p.set_defaults(func=cmd_envoy_bootstrap)

    p = sub.add_parser("up", help="run the local mesh: runtimes, control plane and an Envoy gateway")
    p.add_argument("dir", help="directory of KServe manifests (InferenceService, ServingRuntime)")
    p.add_argument("--pvc", action="append", default=[], metavar="NAME=PATH",
                   help="map a PVC name to a local folder (repeatable)")
    p.add_argument("--replicas", type=int, default=None, help="runtime replicas per ServingRuntime")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    p.add_argument("--state-dir", default=None, help="logs and runtime files (default: DIR/.msm)")
    _add_gateway_args(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("control-plane", help=argparse.SUPPRESS)  # started by `msm up`
    p.add_argument("dir")
    p.add_argument("--instances-file", required=True)
    p.add_argument("--rollout-state", default=None, help="file where rollouts outlive a restart")
    p.add_argument("--pvc", action="append", default=[])
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    p.add_argument("--envoy-admin-port", type=int, required=True)
    p.add_argument("--gateway-token-file", default=None)
    p.add_argument("--activator-rest-port", type=int, default=0)
    p.add_argument("--activator-grpc-port", type=int, default=0)
    _add_gateway_args(p)
    p.set_defaults(func=cmd_control_plane)

    p = sub.add_parser("kube-control-plane",
                       help="run the control plane in Kubernetes mode (in a pod, or with a kubeconfig)")
    p.add_argument("--kubeconfig", default=None,
                   help="kubeconfig file (default: $KUBECONFIG, else the pod's ServiceAccount)")
    p.add_argument("--xds-host", default="127.0.0.1", help="xDS listen address (0.0.0.0 in a pod)")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument("--admin-host", default="127.0.0.1", help="metrics/status listen address")
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    p.add_argument("--advertise-address", default=os.environ.get("POD_IP") or "127.0.0.1",
                   help="the address the gateway reaches this process's activator at ($POD_IP)")
    p.add_argument("--gateway-address", default="127.0.0.1",
                   help="where the activator replays requests once their model is ready (the gateway)")
    p.add_argument("--gateway-host", default="127.0.0.1",
                   help="the gateway's host name, for InferenceService status url/address")
    p.add_argument("--envoy-admin-url", default=None, help="the gateway's admin URL (request counts)")
    p.add_argument("--gateway-token-file", default=None, metavar="FILE", help=TOKEN_HELP)
    p.add_argument("--adapter-image", default="msm:0.1.0",
                   help="image of msm's adapter sidecar in runtime pods")
    p.add_argument("--runtime-replicas", type=int, default=None,
                   help="pods per ServingRuntime in use (default: the ServingRuntime's replicas, else 2)")
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True,
                   help="elect one leader among the replicas with a Lease (default: on)")
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE") or "modelmesh-serving",
                   help="namespace of the leader Lease ($POD_NAMESPACE, else modelmesh-serving)")
    p.add_argument("--identity", default=os.environ.get("POD_NAME") or "",
                   help="this replica's name in the Lease ($POD_NAME, else msm-<pid>)")
    p.add_argument("--lease-duration", type=float, default=15.0, help="seconds (15)")
    p.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (10)")
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds (2)")
    p.add_argument("--istio-gateway", action="append", default=[], metavar="NAMESPACE/SERVICEACCOUNT",
                   help="serve the Istio ingress gateway running as this ServiceAccount (repeatable; "
                        "istio/model-gateway.yaml's is istio-system/msm-model-gateway-service-account)")
    p.add_argument("--istio-xds-port", type=int, default=15012,
                   help="TLS xDS port for Istio gateways' agents (15012)")
    p.add_argument("--istio-measure-port", type=int, default=15013,
                   help="mutual-TLS port where Istio gateways report the requests of revisions in a "
                        "rollout (their workload certificate, signed by the mesh's root); 0: none (15013)")
    p.add_argument("--istio-rest-port", type=int, default=DEFAULT_REST_PORT,
                   help="the Istio gateway's REST listener: its Service's targetPort (8008)")
    p.add_argument("--istio-grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                   help="the Istio gateway's gRPC listener (8033)")
    p.add_argument("--istio-upstream-tls", choices=["auto", "on", "off"], default="auto",
                   help="how the Istio gateway reaches runtime pods: Istio mTLS (SDS secrets default/ROOTCA; "
                        "the runtime's identity of its namespace) to every pod (on), to pods with Istio's "
                        "sidecar and plaintext to the others, as Istio's auto mTLS (auto, the default), or "
                        "never (off)")
    p.add_argument("--istio-trust-domain", default="cluster.local", help="the mesh's trust domain")
    p.add_argument("--model-gateway", default="istio-system/msm-model-gateway", metavar="NAMESPACE/NAME",
                   help="the gateway VirtualServices name in `gateways` to be msm's traffic policy "
                        "(istio-system/msm-model-gateway); others are left alone")
    _add_gateway_args(p)
    p.set_defaults(func=cmd_kube_control_plane)

    # `msm adapter ...` is dispatched in main(), before this parser: listed here for --help
    sub.add_parser("adapter", help="msm's MLServer adapter, the sidecar of a runtime pod (--help: its flags)")

    p = sub.add_parser("dev-cluster", help="a Kubernetes dev cluster on this machine, msm installed in it")
    dev = p.add_subparsers(dest="action", required=True)
    p = dev.add_parser("up", help="run etcd, kube-apiserver, controllers, msm, the gateway and a pod runner "
                                  "in the foreground; Ctrl-C stops all")
    p.add_argument("--pvc", action="append", default=[], metavar="[NAMESPACE/]NAME=PATH",
                   help="a PVC (namespace modelmesh-serving unless given) holding this folder (repeatable)")
    p.add_argument("--state-dir", default=".msm-cluster", help="kubeconfig, logs, pods (.msm-cluster)")
    p.add_argument("--deploy", default=None, help="msm's deploy/ folder (default: the one of this checkout)")
    p.add_argument("--xds-port", type=int, default=DEFAULT_XDS_PORT)
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    p.add_argument("--runtime-replicas", type=int, default=None, help="pods per ServingRuntime in use")
    p.add_argument("--controllers", type=int, default=2,
                   help="msm control-plane replicas (2: one leads, one follows; the first on --xds-port)")
    p.add_argument("--istio", action="store_true",
                   help="install Istio with istioctl (istio/model-gateway.yaml); its gateway, run by the "
                        "real pilot-agent, is the gateway (docs/istio.md)")
    _add_gateway_args(p)
    p.set_defaults(func=cmd_dev_cluster)

    p = sub.add_parser("status", help="models, instances and the gateway of the running local mesh")
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("validate", help="check a directory of KServe manifests and say what msm makes of it")
    p.add_argument("dir")
    p.add_argument("--pvc", action="append", default=[], metavar="NAME=PATH")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["adapter"]:  # its own flags, all of them (`msm adapter --help`)
        from placement.adapters.mlserver import main as adapter_main

        return adapter_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
