#!/usr/bin/env bash
# Makes sure redis-server is installed (Debian/Ubuntu: apt-get).
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 || [ -n "${REDIS_SERVER:-}" ]; then
  exit 0
fi
echo "redis-server not found; installing it with apt-get" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get install -y -qq redis-server >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server; }
command -v redis-server >/dev/null
