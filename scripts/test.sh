#!/usr/bin/env bash
# The test command: installs what the tests need, then builds (warnings are errors in our targets) and
# runs every test: unit tests and integration tests against real redis-server processes on loopback;
# then builds the documentation with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-dependencies.sh
swift build --build-tests
# The Hummingbird example is a package of its own (the library's users do not resolve Hummingbird);
# a test runs it, so it is built here.
swift build --package-path Examples/HummingbirdApp
# At most 8 tests at a time: each integration test starts its own redis-server (some several, or the
# tool as a subprocess), and with every test started at once a 2-core machine starves the test
# process past the deadlines the tests wait for. 8 keeps the run near 45 s and the timings honest.
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH="${SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH:-8}"
swift test --skip-build "$@"
# The DocC catalogs of the libraries build, with warnings (broken links, undocumented parameters) as errors.
if ! swift package --disable-sandbox generate-documentation \
    --target RedisRotation --target RedisRotationAdmin --target RedisRotationTesting --warnings-as-errors >.build/documentation.log 2>&1; then
    grep -v "prohibited flag" .build/documentation.log
    exit 1
fi
echo "documentation: built without warnings"
