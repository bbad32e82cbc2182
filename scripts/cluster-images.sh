#!/usr/bin/env bash
# The images the test cluster runs, as docker-archive tarballs in the cache
# (made once; the agent's again when the tree changed): the agent from the
# Dockerfile (scripts/image-build.sh), a consumer with Python, NumPy and this
# checkout's client, Redis, and the pause image (built from the Kubernetes
# module's pause.c). No registry: the kubelet runs them with
# imagePullPolicy Never after they are imported. Prints the archives. Root.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MEMCUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/memcuda}
D=$CACHE/images
mkdir -p "$D"
BA=(buildah --storage-driver vfs)
K8S_VERSION=${K8S_VERSION:-1.37.2}
log() { printf '[images %5ss] %s\n' "$SECONDS" "$*" >&2; }
command -v buildah >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; }

# archive NAME TAG: pushes the local image to $D/NAME.tar.
archive() {
  rm -f "$D/$1.tar"
  "${BA[@]}" push -q "$2" "docker-archive:$D/$1.tar:$2" >/dev/null
}

# The agent: rebuilt when what goes into its binaries changed.
tree=$( (git ls-files Dockerfile go.mod go.sum '*.go' | grep -v -e '_test\.go$' -e '^test/' -e '^bench/' | sort | xargs cat) | sha256sum | cut -c1-16)
if [ "$(cat "$D/agent.tree" 2>/dev/null)" != "$tree" ] || [ ! -f "$D/agent.tar" ]; then
  log "agent image (tree $tree)"
  IMAGE=localhost/memcuda:ci bash scripts/image-build.sh >"$D/agent-build.log" 2>&1 || { tail -30 "$D/agent-build.log" >&2; exit 1; }
  archive agent localhost/memcuda:ci
  echo "$tree" >"$D/agent.tree"
fi

# The bases come from image-build.sh (pulled, or stood in for).
base=docker.io/library/debian:bookworm-slim

if [ ! -f "$D/pause.tar" ]; then
  log "pause image"
  dir=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  work=$(mktemp -d)
  gcc -Os -static -DVERSION="v$K8S_VERSION-ci" -o "$work/pause" "$dir/build/pause/linux/pause.c"
  c=$("${BA[@]}" from scratch)
  "${BA[@]}" copy "$c" "$work/pause" /pause >/dev/null
  "${BA[@]}" config --entrypoint '["/pause"]' "$c"
  "${BA[@]}" commit -q "$c" localhost/pause:ci >/dev/null
  "${BA[@]}" rm "$c" >/dev/null
  rm -rf "$work"
  archive pause localhost/pause:ci
fi

if [ ! -f "$D/redis.tar" ]; then
  log "redis image (Debian's redis-server)"
  c=$("${BA[@]}" from --pull-never "$base")
  "${BA[@]}" run --isolation chroot "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null && rm -rf /var/lib/apt/lists/*'
  "${BA[@]}" config --entrypoint '["redis-server"]' "$c"
  "${BA[@]}" commit -q "$c" localhost/redis:ci >/dev/null
  "${BA[@]}" rm "$c" >/dev/null
  archive redis localhost/redis:ci
fi

# The consumer: Python and NumPy from Debian, the client from this tree.
py=$( (find python/memcuda -name '*.py' -print0 | sort -z | xargs -0 cat) | sha256sum | cut -c1-16)
if [ "$(cat "$D/consumer.tree" 2>/dev/null)" != "$py" ] || [ ! -f "$D/consumer.tar" ]; then
  log "consumer image (client $py)"
  if ! "${BA[@]}" inspect --type image localhost/memcuda-py-base:ci >/dev/null 2>&1; then
    c=$("${BA[@]}" from --pull-never "$base")
    "${BA[@]}" run --isolation chroot "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-numpy >/dev/null && rm -rf /var/lib/apt/lists/*'
    "${BA[@]}" commit -q "$c" localhost/memcuda-py-base:ci >/dev/null
    "${BA[@]}" rm "$c" >/dev/null
  fi
  c=$("${BA[@]}" from --pull-never localhost/memcuda-py-base:ci)
  "${BA[@]}" copy "$c" python/memcuda /usr/local/lib/python3.11/dist-packages/memcuda >/dev/null
  "${BA[@]}" config --cmd '["python3"]' "$c"
  "${BA[@]}" commit -q "$c" localhost/memcuda-py:ci >/dev/null
  "${BA[@]}" rm "$c" >/dev/null
  archive consumer localhost/memcuda-py:ci
  echo "$py" >"$D/consumer.tree"
fi
echo "$D/pause.tar $D/redis.tar $D/agent.tar $D/consumer.tar"
