#!/usr/bin/env bash
# make test-cluster: the images (cached), a single-node cluster in its own
# network namespace (scripts/cluster.sh), test/cluster's scenarios run
# inside that namespace, and the cluster torn down whatever happened. Root.
# Times of each phase go to stderr. KEEP_CLUSTER=1 leaves it up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "make test-cluster needs root (containerd, the kubelet, network namespaces)" >&2; exit 1; }
t0=$SECONDS
phase() { printf '[test-cluster %5ss] %s\n' "$((SECONDS - t0))" "$*" >&2; }
command -v kubectl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; }
bash scripts/ensure-redis.sh
HELM=$(bash scripts/helm.sh)
export HELM
bash scripts/k8s-assets.sh >/dev/null
phase "kubernetes binaries ready"
read -r -a images <<<"$(bash scripts/cluster-images.sh)"
phase "images ready"
go test -c -o /tmp/memcuda-cluster.test ./test/cluster
[ -n "${KEEP_CLUSTER:-}" ] || trap 'phase "tearing down"; bash scripts/cluster.sh down; phase "down"' EXIT
envfile=$(bash scripts/cluster.sh up)
# shellcheck disable=SC1090
. "$envfile"
phase "cluster up"
bash scripts/cluster.sh import "${images[@]}"
phase "images imported"
nsenter --net="/var/run/netns/$CLUSTER_NETNS" env MEMCUDA_CLUSTER_ENV="$envfile" PATH="$PATH" HELM="$HELM" KUBECONFIG="$KUBECONFIG" \
  CLUSTER_DIR="$CLUSTER_DIR" CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" \
  bash -c 'cd test/cluster && /tmp/memcuda-cluster.test -test.v -test.count=1 -test.timeout 25m'
phase "scenarios passed"
