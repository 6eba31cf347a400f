#!/usr/bin/env bash
# Builds the pinned test tools (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl: scripts/tools/) into a cache outside the tree, once; prints the folder that holds
# them. Exit 3: no Go toolchain here.
set -euo pipefail
cd "$(dirname "$0")/tools"
say() { echo "msm tools: $*"; }
if ! command -v go >/dev/null 2>&1; then
  say "no Go toolchain on this machine: the Kubernetes tests cannot run (they need Go >= 1.26 to build etcd and kube-apiserver)"
  exit 3
fi
CACHE=${MSM_TOOLS_CACHE:-$HOME/.cache/msm-tools}
KEY=$(cat go.mod go.sum tools.go cmd/etcd/main.go ../build-tools.sh | sha256sum | cut -c1-16)
OUT=$CACHE/$KEY/bin
COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler kubectl"
missing=""
for c in $COMPONENTS; do [ -x "$OUT/$c" ] || missing="$missing $c"; done
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
say "building$missing (Kubernetes $K8S) into $OUT; the first build takes 5-10 minutes on 2 cores"
started=$(date +%s)
for c in $missing; do
  case $c in
    etcd) pkg=./cmd/etcd; ld="-s -w" ;;
    kube-apiserver) pkg=k8s.io/kubernetes/cmd/kube-apiserver; ld="-s -w $STAMP" ;;
    kubectl) pkg=k8s.io/kubernetes/cmd/kubectl; ld="-s -w $STAMP" ;;
    kube-controller-manager) pkg=k8s.io/kubernetes/cmd/kube-controller-manager; ld="-s -w $STAMP" ;;
    kube-scheduler) pkg=k8s.io/kubernetes/cmd/kube-scheduler; ld="-s -w $STAMP" ;;
  esac
  t=$(date +%s)
  say "  $c ..."
  go build -trimpath -ldflags="$ld" -o "$OUT/$c.tmp" "$pkg"
  mv "$OUT/$c.tmp" "$OUT/$c"
  say "  $c built in $(( $(date +%s) - t ))s"
done
# the build cache (2+ GB) is only worth keeping for a rebuild of the same versions
[ -n "${MSM_TOOLS_KEEP_GOCACHE:-}" ] || rm -rf "$GOCACHE"
ln -sfn "$KEY" "$CACHE/current"
say "built in $(( $(date +%s) - started ))s: $OUT ($(du -sh "$OUT" | cut -f1) of binaries, $(du -sh "$GOMODCACHE" | cut -f1) of Go modules in $GOMODCACHE)"
