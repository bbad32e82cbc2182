# Shared helpers of the scripts: a throwaway redis-server and agent.
# Source it; call memcuda_up, then memcuda_down (set as an EXIT trap).

unpack_wheels() {
  # $1: a directory to put on PYTHONPATH; $2: a directory of wheels (a zip
  # each) of pure-Python packages a GPU machine lacks, unpacked into $1, not
  # installed. Returns 1 when $2 holds none.
  compgen -G "$2/*.whl" >/dev/null || return 1
  python3 -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$1" "$2"/*.whl
}

ab_binaries() {
  # The two agent builds of an A/B, in directories $1 and $2: unpacked when
  # gzipped and made executable; on the GPU machine the carried
  # .device/redis serves as redis-server.
  local d=$PWD/.device
  if [ -d "$d/redis/usr/bin" ]; then
    export LD_LIBRARY_PATH=$d/redis/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export REDIS_SERVER=$d/redis/usr/bin/redis-server
  fi
  local f
  for f in "$1"/*.gz "$2"/*.gz; do [ -f "$f" ] && gunzip -f "$f"; done
  chmod +x "$1"/* "$2"/*
}

memcuda_redis_up() {
  # $1: directory for the run. Redis listens on a Unix socket only:
  # node-local, and faster than TCP loopback.
  RUN_DIR=$1
  mkdir -p "$RUN_DIR"
  "${REDIS_SERVER:-redis-server}" --port 0 --unixsocket "$RUN_DIR/redis.sock" --unixsocketperm 600 --dir "$RUN_DIR" \
    --save "" --appendonly no --daemonize no --logfile "$RUN_DIR/redis.log" &
  REDIS_PID=$!
  for _ in $(seq 100); do
    [ -S "$RUN_DIR/redis.sock" ] && break
    sleep 0.05
  done
}

memcuda_up() {
  # $1: directory for the run; extra args go to the agent.
  memcuda_redis_up "$1"; shift
  export MEMCUDA_SOCKET=$RUN_DIR/agent.sock
  export MEMCUDA_REDIS_URL=unix://$RUN_DIR/redis.sock
  "$BIN_DIR/memcuda-agent" --redis-url "$MEMCUDA_REDIS_URL" --socket "$MEMCUDA_SOCKET" \
    --metrics-addr "" --log-format text "$@" >"$RUN_DIR/agent.log" 2>&1 &
  AGENT_PID=$!
  for _ in $(seq 200); do
    "$BIN_DIR/memcuda" --timeout 1s ls >/dev/null 2>&1 && return 0
    kill -0 "$AGENT_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "agent did not start:" >&2
  cat "$RUN_DIR/agent.log" >&2
  return 1
}

memcuda_down() {
  # The PIDs are cleared, so that a later memcuda_up starts afresh and an
  # EXIT trap calling this again signals no reused PID.
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
  AGENT_PID= REDIS_PID=
}

# memcuda_session NAME [agent flags]: Redis and an agent in a fresh
# /tmp/memcuda-NAME.* directory, both stopped and removed when the script
# exits. Needs BIN_DIR; installs redis-server when missing.
memcuda_session() {
  local name=$1; shift
  bash "$(dirname "${BASH_SOURCE[0]}")/ensure-redis.sh"
  RUN=$(mktemp -d "/tmp/memcuda-$name.XXXXXX")
  trap 'memcuda_down; rm -rf "$RUN"' EXIT
  memcuda_up "$RUN" "$@"
}
