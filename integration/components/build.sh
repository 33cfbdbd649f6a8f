#!/usr/bin/env bash
# build.sh builds the real components the integration suite runs: etcd,
# kube-apiserver, kube-controller-manager, Dex, KWOK, and the clients helm
# and k9s. Each is built from the Go module proxy through a small wrapper
# module in this directory and installed into a per-user cache outside
# the clone, keyed by version, so a fresh clone on the same machine
# reuses it.
#
#   build.sh            build whatever is missing
#   build.sh --print    print the cache directory
#   build.sh --clean-go-cache   drop the Go build cache afterwards (4-5 GB)
#
# CLUSTRAL_TEST_BIN overrides the cache directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${CLUSTRAL_TEST_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/clustral/test-bin}

ETCD_VERSION=v3.7.3
KUBE_VERSION=v1.37.2
DEX_VERSION=v2.45.1
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
K9S_VERSION=v0.50.16

clean_cache=0
for a in "$@"; do
  case "$a" in
    --print) echo "$bin"; exit 0 ;;
    --clean-go-cache) clean_cache=1 ;;
    *) echo "build.sh: unknown argument $a (use --print or --clean-go-cache)" >&2; exit 2 ;;
  esac
done

mkdir -p "$bin"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

log() { printf '[components] %s\n' "$*" >&2; }

# build NAME VERSION DIR PKG [ldflags]: build PKG inside wrapper module DIR
# into $bin/NAME-VERSION/NAME, atomically.
build() {
  local name=$1 version=$2 dir=$3 pkg=$4 ldflags=${5:-}
  local dest="$bin/$name-$version/$name"
  if [ -x "$dest" ]; then return 0; fi
  log "building $name $version (one time; cached in $bin)"
  local start=$SECONDS
  mkdir -p "$(dirname "$dest")"
  (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$dest.tmp" "$pkg")
  mv "$dest.tmp" "$dest"
  log "built $name in $((SECONDS - start))s"
}

build etcd "$ETCD_VERSION" etcd .

kv="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"
build kube-apiserver "$KUBE_VERSION" kube k8s.io/kubernetes/cmd/kube-apiserver "$kv"
build kube-controller-manager "$KUBE_VERSION" kube k8s.io/kubernetes/cmd/kube-controller-manager "$kv"
build dex "$DEX_VERSION" dex github.com/dexidp/dex/cmd/dex "-X github.com/dexidp/dex/version.Version=$DEX_VERSION"

kwok="$bin/kwok-$KWOK_VERSION/kwok"
if [ ! -x "$kwok" ]; then
  log "building kwok $KWOK_VERSION (one time)"
  start=$SECONDS
  mkdir -p "$(dirname "$kwok")"
  GOFLAGS= GOBIN="$(dirname "$kwok")" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  log "built kwok in $((SECONDS - start))s"
fi

# helm is built against clustral's Kubernetes libraries (the wrapper module
# pins them), so it shares their compiled packages with kube-apiserver; the
# chartutil/lint variables tell it which Kubernetes version it speaks.
hv="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
hv="$hv -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"
hv="$hv -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37"
build helm "$HELM_VERSION" helm helm.sh/helm/v3/cmd/helm "$hv"

# k9s keeps its own Kubernetes libraries: it is a client, tested as released.
build k9s "$K9S_VERSION" k9s github.com/derailed/k9s "-X github.com/derailed/k9s/cmd.version=$K9S_VERSION"

if [ "$clean_cache" = 1 ]; then
  log "dropping the Go build cache ($(go env GOCACHE))"
  go clean -cache
fi
log "components ready in $bin"
