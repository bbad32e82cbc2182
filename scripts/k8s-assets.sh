#!/usr/bin/env bash
# Builds (once) what the single-node test cluster runs besides the
# kube-apiserver and etcd of envtest-assets.sh: kubelet, kube-scheduler,
# kube-controller-manager and kube-proxy from the Go module proxy (a wrapper
# module: k8s.io/kubernetes with each staging module replaced by its
# published v0.x twin), and CoreDNS. Installs the node's parts from Debian
# when missing: containerd, runc, the CNI plugins, iptables. Prints the
# directory holding the binaries.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-1.37.2}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
CACHE=${MEMCUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memcuda}
BIN=$CACHE/k8s/v$K8S_VERSION
mkdir -p "$BIN"

need=()
for c in containerd runc iptables; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian" >&2
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2 ||
    (apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2))
fi

declare -A pkg=(
  [kubelet]="k8s.io/kubernetes/cmd/kubelet/app NewKubeletCommand(context.Background())"
  [kube-scheduler]="k8s.io/kubernetes/cmd/kube-scheduler/app NewSchedulerCommand()"
  [kube-controller-manager]="k8s.io/kubernetes/cmd/kube-controller-manager/app NewControllerManagerCommand()"
  [kube-proxy]="k8s.io/kubernetes/cmd/kube-proxy/app NewProxyCommand()"
)
missing=()
for b in kubelet kube-scheduler kube-controller-manager kube-proxy; do [ -x "$BIN/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "building ${missing[*]} v$K8S_VERSION into $BIN (10-15 min on 2 cores, once)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  modjson=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION")
  gomod=$(printf '%s' "$modjson" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  stage="v0.${K8S_VERSION#*.}"
  {
    echo "module memcuda.local/k8s"
    echo
    grep -m1 '^go ' "$gomod"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v v="$stage" '{print "replace " $1 " => " $1 " " v}'
  } >"$work/go.mod"
  for b in "${missing[@]}"; do
    read -r imp ctor <<<"${pkg[$b]}"
    mkdir -p "$work/$b"
    cat >"$work/$b/main.go" <<GO
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"$imp"
)

var _ = context.Background

func main() { os.Exit(cli.Run(app.$ctor)) }
GO
  done
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >&2)
  for b in "${missing[@]}"; do
    (cd "$work" && CGO_ENABLED=0 go build -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION" -o "$BIN/$b" "./$b" >&2)
  done
fi
if [ ! -x "$BIN/coredns" ]; then
  echo "building coredns $COREDNS_VERSION into $BIN (5 min, once)" >&2
  GOBIN=$BIN CGO_ENABLED=0 go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION" >&2
fi
echo "$BIN"
