#!/usr/bin/env bash
# Builds (once) the kube-apiserver and finds etcd for envtest, caching them
# outside the repository. Prints the two environment assignments envtest
# needs. kube-apiserver comes from the Go module proxy through a wrapper
# module: k8s.io/kubernetes with each staging module replaced by its
# published v0.x twin.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-1.37.2}
CACHE=${MEMCUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memcuda}
BIN=$CACHE/envtest/v$K8S_VERSION
mkdir -p "$BIN"

if [ ! -x "$BIN/kube-apiserver" ]; then
  echo "building kube-apiserver v$K8S_VERSION into $BIN (10-20 min on 2 cores, once)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  modjson=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION")
  gomod=$(printf '%s' "$modjson" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  minor=${K8S_VERSION#*.}
  stage="v0.$minor"
  {
    echo "module memcuda.local/kubeapiserver"
    echo
    grep -m1 '^go ' "$gomod"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    # Every staging module (replaced by ./staging/... upstream) -> its v0.x release.
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v v="$stage" '{print "replace " $1 " => " $1 " " v}'
  } >"$work/go.mod"
  cat >"$work/main.go" <<'GO'
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() { os.Exit(cli.Run(app.NewAPIServerCommand())) }
GO
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >&2 && CGO_ENABLED=0 go build -o "$BIN/kube-apiserver" . >&2)
fi

ETCD=${ETCD:-}
if [ -z "$ETCD" ]; then
  if command -v etcd >/dev/null; then
    ETCD=$(command -v etcd)
  elif [ -x /usr/bin/etcd ]; then
    ETCD=/usr/bin/etcd
  else
    echo "installing etcd-server from Debian" >&2
    (apt-get install -y -qq etcd-server >&2 || (apt-get update -qq >&2 && apt-get install -y -qq etcd-server >&2))
    ETCD=$(command -v etcd)
  fi
fi
echo "export TEST_ASSET_KUBE_APISERVER=$BIN/kube-apiserver"
echo "export TEST_ASSET_ETCD=$ETCD"
