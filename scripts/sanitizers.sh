#!/usr/bin/env bash
# Opt-in: builds and runs the test suite under a sanitizer, in its own scratch folder, then summarises.
# Usage: scripts/sanitizers.sh asan|tsan [arguments for swift test, e.g. --filter 'Connection|Client']
#   asan: AddressSanitizer with LeakSanitizer (leaks are reported when each process exits; leaks of the
#         toolchain's own libraries are suppressed in scripts/lsan-suppressions.txt, each with its reason).
#   tsan: ThreadSanitizer, with the ThreadSanitizerLocks trait so that the package's locks are pthread
#         mutexes TSan understands (it cannot see Synchronization.Mutex's futex on Linux); reports that
#         are not races in RedisRotation are suppressed in scripts/tsan-suppressions.txt, each with its reason.
# Tests run one at a time (--no-parallel): in parallel on 2 cores, 20 to 23 tests missed their deadlines
# under either sanitizer. Every report goes to .build-<asan|tsan>/reports/, one file per process (the
# test runner and the redis-rotation processes the tests start). Exits 1 when a test failed or a
# sanitizer reported anything.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:-}
shift || true
case "$kind" in
  asan) sanitize=address; traits=(); options_var=ASAN_OPTIONS
        options="detect_leaks=1:halt_on_error=0:handle_sigill=1" ;;
  tsan) sanitize=thread; traits=(--traits ThreadSanitizerLocks); options_var=TSAN_OPTIONS
        options="halt_on_error=0:second_deadlock_stack=1:history_size=4:print_suppressions=1:suppressions=$(pwd)/scripts/tsan-suppressions.txt" ;;
  *) echo "usage: scripts/sanitizers.sh asan|tsan [swift test arguments]" >&2; exit 2 ;;
esac

scripts/install-dependencies.sh
scratch=".build-$kind"
reports="$(pwd)/$scratch/reports"
start=$(date +%s)
swift build --build-tests --scratch-path "$scratch" --sanitize="$sanitize" "${traits[@]}"
built=$(date +%s)

rm -rf "$reports" && mkdir -p "$reports"
set +e
# Swift's own crash backtracer reads freed memory as it walks a dying process, which ASan reports; the
# sanitizer prints the stack itself.
env SWIFT_BACKTRACE=enable=no LSAN_OPTIONS="suppressions=$(pwd)/scripts/lsan-suppressions.txt:print_suppressions=0" "$options_var=$options:log_path=$reports/$kind" \
  swift test --skip-build --scratch-path "$scratch" --sanitize="$sanitize" "${traits[@]}" --no-parallel "$@" \
  2>&1 | tee "$scratch/test.log"
status=${PIPESTATUS[0]}
set -e
finished=$(date +%s)

count=$(cat "$reports"/* 2>/dev/null | grep -cE '^(WARNING: ThreadSanitizer|==[0-9]+==ERROR)' || true)
echo
echo "== $kind summary"
echo "build $((built - start)) s, tests $((finished - built)) s, swift test exit status $status"
grep -E '^(✔|✘|􀟈|􀢄)? ?Test run with|^Executed [0-9]+ tests' "$scratch/test.log" | tail -2 || true
echo "sanitizer reports: $count (in $reports)"
cat "$reports"/* 2>/dev/null | grep -E '^SUMMARY:' | sed -E 's/ \(.*\+0x[0-9a-f]+\)//' | sort | uniq -c | sort -rn | head -40 || true
cat "$reports"/* 2>/dev/null | grep -E 'Matched [0-9]+ suppressions|Suppressions used' -A4 || true
[ "$status" -eq 0 ] && [ "$count" -eq 0 ]
