#!/usr/bin/env bash
# The test command: installs what the tests need, then builds (warnings are errors in our targets) and
# runs every test: unit tests and integration tests against real redis-server processes on loopback;
# then builds the documentation with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-dependencies.sh
swift build --build-tests
swift test --skip-build "$@"
# The DocC catalogs of the libraries build, with warnings (broken links, undocumented parameters) as errors.
if ! swift package --disable-sandbox generate-documentation \
    --target RedisRotation --target RedisRotationAdmin --target RedisRotationTesting --warnings-as-errors >.build/documentation.log 2>&1; then
    grep -v "prohibited flag" .build/documentation.log
    exit 1
fi
echo "documentation: built without warnings"
