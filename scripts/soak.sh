#!/usr/bin/env bash
# The soak (opt-in, minutes): 1,000 password and 100 mutual-TLS certificate rotations under traffic in one
# client, against a private TLS redis-server; fails if a command fails, an acknowledged write is lost,
# or resident memory or open descriptors grow. Counts: REDIS_ROTATION_SOAK_PASSWORDS,
# REDIS_ROTATION_SOAK_CERTIFICATES. Prints one "soak:" line with the figures for docs/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-dependencies.sh
swift build --build-tests
REDIS_ROTATION_SOAK=1 swift test --skip-build --filter SoakTests "$@"
