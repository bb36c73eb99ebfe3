#!/usr/bin/env bash
# The test command: installs what the tests need, then builds (warnings are errors in our targets) and
# runs every test: unit tests and integration tests against real redis-server processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-dependencies.sh
swift build --build-tests
swift test --skip-build "$@"
