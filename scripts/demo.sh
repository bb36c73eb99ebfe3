#!/usr/bin/env bash
# The demo command: installs what is missing (as scripts/test.sh does), builds, and runs
# `redis-rotation demo`, which starts its own TLS redis-server on a free loopback port, rotates a
# password, the server certificate, the CA and the client certificate under live traffic, prints the
# report and writes redis-rotation-demo.html. Extra arguments go to the demo (e.g. --duration 30).
# The tool is built in release: the demo's throughput and latencies are the library's, not a debug
# build's (about 6 times slower). The first build takes a few minutes; later ones are incremental.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-dependencies.sh
swift build -c release --product redis-rotation
exec "$(swift build -c release --product redis-rotation --show-bin-path)/redis-rotation" demo "$@"
