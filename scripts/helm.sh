#!/usr/bin/env bash
# Prints the path of a helm binary, building helm v3.22.0 from the Go module
# proxy into the cache (outside the repository) when there is none.
set -euo pipefail
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${MEMCUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memcuda}
BIN=$CACHE/helm/$HELM_VERSION
if [ ! -x "$BIN/helm" ]; then
  echo "building helm $HELM_VERSION into $BIN (once)" >&2
  mkdir -p "$BIN"
  GOBIN=$BIN CGO_ENABLED=0 go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
echo "$BIN/helm"
