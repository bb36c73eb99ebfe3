#!/usr/bin/env bash
# Installs what building and testing RedisRotation needs on Debian or Ubuntu: hiredis 0.14 and OpenSSL 3
# headers (the C libraries the package wraps), pkg-config (how SwiftPM finds them), redis-server (the real
# server the integration tests start) and openssl (the command-line tool). Swift itself must be on PATH.
set -euo pipefail

packages=(libhiredis-dev libssl-dev pkg-config redis-server openssl)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi

command -v swift >/dev/null || { echo "swift is not on PATH: install Swift 6.1 or later (https://swift.org/install)" >&2; exit 1; }
