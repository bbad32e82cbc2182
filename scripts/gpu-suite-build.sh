#!/usr/bin/env bash
# Builds everything the GPU suite needs into .device/ (ignored by git, carried
# to the GPU machine, which has no Go and no network): stripped binaries, Go
# test binaries, and redis-server unpacked from Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
D=.device
rm -rf "$D" && mkdir -p "$D/bin" "$D/test" "$D/redis"
export CGO_ENABLED=1
LD="-s -w"
go build -ldflags "$LD" -o "$D/bin/" ./cmd/memcuda-agent ./cmd/memcuda ./bench/pooltrace ./bench/handover
go test -c -ldflags "$LD" -o "$D/test/cuda.test" ./cuda
go test -c -ldflags "$LD" -o "$D/test/gpu.test" ./pkg/backend/gpu
# Benchmarks that split a create's time: Redis scripts, store with the GPU,
# the whole agent over its socket against an echo server.
go test -c -ldflags "$LD" -o "$D/test/registry.test" ./pkg/registry
go test -c -ldflags "$LD" -o "$D/test/store.test" ./pkg/store
go test -c -ldflags "$LD" -o "$D/test/agent.test" ./pkg/agent
# The client's C decoder, in place (stable ABI: the GPU machine's newer
# CPython loads it); the run carries python/memcuda/_speedups.abi3.so.
(cd python && python3 setup.py -q build_ext --inplace)
# Compressed for the trip (the carry is limited to 64 MiB; the agent and
# its benchmark carry the Kubernetes libraries); the run script unpacks them.
gzip -9 "$D"/bin/* "$D"/test/*
tmp=$(mktemp -d)
(cd "$tmp" && apt-get download redis-server redis-tools liblzf1 libjemalloc2 >/dev/null 2>&1 || { apt-get update -qq && apt-get download redis-server redis-tools liblzf1 libjemalloc2; })
for f in "$tmp"/*.deb; do dpkg -x "$f" "$D/redis"; done
rm -rf "$tmp" "$D/redis/usr/share" "$D/redis/etc"
# RMM's pool for the allocator comparison (the GPU machine has no network):
# the CUDA 13 wheels for its Python 3.12, unpacked there.
mkdir -p "$D/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  -d "$D/wheels" "rmm-cu13==26.10.*" "librmm-cu13==26.10.*" "rapids-logger==0.3.*" \
  || echo "RMM wheels not downloaded: the allocator comparison will skip RMM" >&2
# redis-py for the client's Redis-only path (the GPU machine's Python lacks
# it): pure Python, unpacked there onto the tests' path.
mkdir -p "$D/pywheels"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$D/pywheels" "redis>=4.2"
du -sh "$D"
