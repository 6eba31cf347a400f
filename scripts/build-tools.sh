#!/usr/bin/env bash
# Builds the pinned test tools into a cache outside the tree, once; prints the folder that holds
# them. Kubernetes (scripts/tools/): etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl. Istio (scripts/tools-istio/, a module of its own): istioctl, pilot-discovery (istiod),
# pilot-agent, plus what the proxyv2 image ships beside pilot-agent that the dev cluster's pod runner
# needs: Envoy's bootstrap template (istio-share/envoy_bootstrap_tmpl.json, copied from the module as
# Istio's Dockerfile copies it into the image). Exit 3: no Go toolchain here.
set -euo pipefail
cd "$(dirname "$0")/tools"
say() { echo "msm tools: $*"; }
if ! command -v go >/dev/null 2>&1; then
  say "no Go toolchain on this machine: the Kubernetes tests cannot run (they need Go >= 1.26 to build etcd and kube-apiserver)"
  exit 3
fi
CACHE=${MSM_TOOLS_CACHE:-$HOME/.cache/msm-tools}
ISTIO_DIR=$(cd ../tools-istio && pwd)
KEY=$(cat go.mod go.sum tools.go cmd/etcd/main.go ../build-tools.sh "$ISTIO_DIR"/go.mod "$ISTIO_DIR"/go.sum \
  "$ISTIO_DIR"/tools.go | sha256sum | cut -c1-16)
OUT=$CACHE/$KEY/bin
COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler kubectl istioctl pilot-discovery pilot-agent"
missing=""
for c in $COMPONENTS; do [ -x "$OUT/$c" ] || missing="$missing $c"; done
SHARE=$CACHE/$KEY/istio-share
[ -f "$SHARE/envoy_bootstrap_tmpl.json" ] || missing="$missing istio-share"
if [ -z "$missing" ]; then
  ln -sfn "$KEY" "$CACHE/current"
  say "up to date: $OUT"
  exit 0
fi
mkdir -p "$OUT"
export GOMODCACHE=${GOMODCACHE_TOOLS:-$CACHE/gomod} GOCACHE=$CACHE/gocache-$KEY GOFLAGS="-mod=readonly" GOTOOLCHAIN=local
K8S=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
MAJOR=${K8S#v}; MAJOR=${MAJOR%%.*}; MINOR=${K8S#v*.}; MINOR=${MINOR%%.*}
# the version Kubernetes' own build stamps in (without it kubectl cannot parse the server's)
STAMP=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  STAMP+=" -X $pkg.gitVersion=$K8S -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR -X $pkg.gitTreeState=clean"
done
# Istio's own build stamps its version: istioctl and istiod compare theirs
ISTIO=$(cd "$ISTIO_DIR" && go list -m -f '{{.Version}}' istio.io/istio)
(cd "$ISTIO_DIR" && go mod download istio.io/istio)
ISTIO_VERSION="$(cat "$GOMODCACHE/istio.io/istio@$ISTIO/VERSION" 2>/dev/null || echo 0.0)-dev"
ISTIO_STAMP=""
for v in "buildVersion=$ISTIO_VERSION" "buildGitRevision=${ISTIO##*-}" "buildStatus=Clean" "buildTag=$ISTIO_VERSION" \
    "buildHub=docker.io/istio"; do
  ISTIO_STAMP+=" -X istio.io/istio/pkg/version.$v"
done
say "building$missing (Kubernetes $K8S, Istio $ISTIO_VERSION at $ISTIO) into $OUT; the first build takes about 10 minutes on 2 cores"
started=$(date +%s)
for c in $missing; do
  if [ "$c" = istio-share ]; then
    mkdir -p "$SHARE"
    cp "$GOMODCACHE/istio.io/istio@$ISTIO/tools/packaging/common/envoy_bootstrap.json" "$SHARE/envoy_bootstrap_tmpl.json.tmp"
    chmod 644 "$SHARE/envoy_bootstrap_tmpl.json.tmp"
    mv "$SHARE/envoy_bootstrap_tmpl.json.tmp" "$SHARE/envoy_bootstrap_tmpl.json"
    continue
  fi
  case $c in
    etcd) pkg=./cmd/etcd; ld="-s -w" ;;
    kube-apiserver) pkg=k8s.io/kubernetes/cmd/kube-apiserver; ld="-s -w $STAMP" ;;
    kubectl) pkg=k8s.io/kubernetes/cmd/kubectl; ld="-s -w $STAMP" ;;
    kube-controller-manager) pkg=k8s.io/kubernetes/cmd/kube-controller-manager; ld="-s -w $STAMP" ;;
    kube-scheduler) pkg=k8s.io/kubernetes/cmd/kube-scheduler; ld="-s -w $STAMP" ;;
    istioctl) pkg=istio.io/istio/istioctl/cmd/istioctl; ld="-s -w $ISTIO_STAMP" ;;
    pilot-discovery|pilot-agent) pkg=istio.io/istio/pilot/cmd/$c; ld="-s -w $ISTIO_STAMP" ;;
  esac
  t=$(date +%s)
  say "  $c ..."
  case $c in
    istioctl|pilot-*) (cd "$ISTIO_DIR" && go build -trimpath -ldflags="$ld" -o "$OUT/$c.tmp" "$pkg") ;;
    *) go build -trimpath -ldflags="$ld" -o "$OUT/$c.tmp" "$pkg" ;;
  esac
  mv "$OUT/$c.tmp" "$OUT/$c"
  say "  $c built in $(( $(date +%s) - t ))s"
done
# the build cache (2+ GB) is only worth keeping for a rebuild of the same versions
[ -n "${MSM_TOOLS_KEEP_GOCACHE:-}" ] || rm -rf "$GOCACHE"
ln -sfn "$KEY" "$CACHE/current"
say "built in $(( $(date +%s) - started ))s: $OUT ($(du -sh "$OUT" | cut -f1) of binaries, $(du -sh "$GOMODCACHE" | cut -f1) of Go modules in $GOMODCACHE)"
