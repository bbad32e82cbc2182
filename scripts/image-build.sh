#!/usr/bin/env bash
# Builds the agent image from the Dockerfile with buildah (no Docker engine:
# chroot isolation, vfs storage; run as root), then checks it: the binaries
# start, link only against the image's glibc, and the agent serves a client
# on the host backend from inside the image's filesystem.
#
# When Docker Hub is unreachable (this project's build machines), the two
# base images are stood in for by local ones of the same releases, made once
# and kept in buildah's storage: debian:bookworm-slim from debootstrap
# (minbase), and golang:1.26-bookworm as that plus gcc, git and this
# machine's Go 1.26 toolchain (and the CAs this machine trusts). The
# Dockerfile is used unchanged.
#
#   IMAGE=localhost/memcuda:dev bash scripts/image-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/memcuda:dev}
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
BA=(buildah --storage-driver vfs)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need buildah buildah
need debootstrap debootstrap

have() { "${BA[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# stand_in_debian: docker.io/library/debian:bookworm-slim from debootstrap.
stand_in_debian() {
  local root; root=$(mktemp -d)
  echo "== base debian:bookworm-slim: Docker Hub unreachable, making it with debootstrap ($MIRROR)"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  local c; c=$("${BA[@]}" from scratch)
  "${BA[@]}" copy "$c" "$root" / >/dev/null
  "${BA[@]}" config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
  "${BA[@]}" commit -q "$c" docker.io/library/debian:bookworm-slim >/dev/null
  "${BA[@]}" rm "$c" >/dev/null
  rm -rf "$root"
}

# stand_in_golang: docker.io/library/golang:1.26-bookworm, laid out like the
# official image (Go in /usr/local/go, GOPATH /go, gcc and git for cgo and VCS
# stamping).
stand_in_golang() {
  local goroot; goroot=$(go env GOROOT)
  case "$(go env GOVERSION)" in go1.26*) ;; *) echo "this machine's Go is $(go env GOVERSION), the stand-in needs 1.26" >&2; exit 1 ;; esac
  echo "== base golang:1.26-bookworm: Docker Hub unreachable, making it from debian:bookworm-slim + $(go env GOVERSION)"
  local c; c=$("${BA[@]}" from docker.io/library/debian:bookworm-slim)
  "${BA[@]}" run --isolation chroot "$c" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev git ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*'
  "${BA[@]}" copy "$c" "$goroot" /usr/local/go >/dev/null
  # The CAs this machine adds to the system's (a TLS-inspecting egress proxy,
  # say): the build stage downloads modules through the same network.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    "${BA[@]}" copy "$c" /usr/local/share/ca-certificates /usr/local/share/ca-certificates >/dev/null
    "${BA[@]}" run --isolation chroot "$c" -- update-ca-certificates >/dev/null
  fi
  "${BA[@]}" config --env GOPATH=/go --env GOTOOLCHAIN=local --env PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --workingdir /go "$c"
  "${BA[@]}" commit -q "$c" docker.io/library/golang:1.26-bookworm >/dev/null
  "${BA[@]}" rm "$c" >/dev/null
}

for base in docker.io/library/debian:bookworm-slim docker.io/library/golang:1.26-bookworm; do
  have "$base" && continue
  if ! timeout 60 "${BA[@]}" pull -q "$base" >/dev/null 2>&1; then
    case "$base" in
      *debian*) stand_in_debian ;;
      *golang*) stand_in_golang ;;
    esac
  fi
done

echo "== buildah bud -t $IMAGE (version $VERSION)"
"${BA[@]}" bud --isolation chroot --pull-never --layers=false --build-arg "VERSION=$VERSION" -t "$IMAGE" -f Dockerfile .

echo "== checks"
c=$("${BA[@]}" from --pull-never "$IMAGE")
trap '"${BA[@]}" rm "$c" >/dev/null 2>&1 || true' EXIT
mnt=$("${BA[@]}" mount "$c")
"${BA[@]}" run --isolation chroot "$c" -- /usr/local/bin/memcuda-agent --version
"${BA[@]}" run --isolation chroot "$c" -- /usr/local/bin/memcuda version
# Only the image's glibc: libcuda.so.1 is dlopened at run time, not linked.
libs=$("${BA[@]}" run --isolation chroot "$c" -- ldd /usr/local/bin/memcuda-agent)
echo "$libs"
if grep -q -e 'not found' -e cuda <<<"$libs"; then
  echo "the agent must link only against the image's glibc" >&2; exit 1
fi
"${BA[@]}" inspect --type image --format 'entrypoint {{.OCIv1.Config.Entrypoint}} env {{.OCIv1.Config.Env}}{{"\n"}}' "$IMAGE"
"${BA[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"
# The image's agent serves a real client: Redis runs here on loopback (the
# chroot shares the network), the agent and the CLI inside the image's
# filesystem.
bash scripts/ensure-redis.sh
run=$mnt/run/memcuda-check && mkdir -p "$run"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --logfile "$run/redis.log" >/dev/null
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
chroot "$mnt" /usr/local/bin/memcuda-agent --backend host --redis-url "redis://127.0.0.1:$port/0" \
  --socket /run/memcuda-check/agent.sock --metrics-addr "" --node image-check >"$run/agent.log" 2>&1 &
agent=$!
ok=0
for _ in $(seq 100); do
  if chroot "$mnt" /usr/local/bin/memcuda --socket /run/memcuda-check/agent.sock create image.check --shape 2,3 --dtype f32 >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
out=$(chroot "$mnt" /usr/local/bin/memcuda --socket /run/memcuda-check/agent.sock ls 2>&1 || true)
kill "$agent"; wait "$agent" 2>/dev/null || true
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
head -3 "$run/agent.log"
echo "$out"
rm -rf "$run"
"${BA[@]}" umount "$c" >/dev/null
[ "$ok" = 1 ] && grep -q image.check <<<"$out" || { echo "the image's agent did not serve a client" >&2; exit 1; }
echo "image $IMAGE OK"
