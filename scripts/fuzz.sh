#!/usr/bin/env bash
# Opt-in: builds the libFuzzer targets in Fuzz/ with the fuzzer and address sanitizers and runs each for a
# bounded time. Usage: scripts/fuzz.sh [target|all] [seconds per target, default 60]
#   targets: FuzzRESPReader (reply reader), FuzzCredentialFile (password files), FuzzPEM (TLS material)
# Seeds come from Fuzz/Corpus/<target> (never written to); inputs libFuzzer finds go to
# .build-fuzz/corpus/<target>, crashes, leaks and timeouts to .build-fuzz/findings/. Exits 1 on a finding:
# minimise it, fix the library with a regression test, and add the input to Fuzz/Corpus/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

all=(FuzzRESPReader FuzzCredentialFile FuzzPEM)
target=${1:-all}
seconds=${2:-60}
if [ "$target" = all ]; then targets=("${all[@]}"); else targets=("$target"); fi
for name in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $name "* ]] || { echo "unknown target '$name' (targets: ${all[*]})" >&2; exit 2; }
done

scripts/install-dependencies.sh
scratch="$root/.build-fuzz"
# Release code with assertions kept: an assertionFailure in the library is a finding too.
# Not `--sanitize=fuzzer --sanitize=address`: SwiftPM passes those to swiftc as two flags in an order
# that changes from run to run (so every run rebuilds everything), and swiftc keeps only the last one
# (so half the builds have no coverage, the other half no ASan). `--sanitize=fuzzer` alone tells
# SwiftPM to let libFuzzer provide main; the -Xswiftc flag comes after it and enables both.
flags=(-c release --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address -Xswiftc -assert-config -Xswiftc Debug
  -Xcc -fsanitize=address)
swift build --package-path Fuzz --scratch-path "$scratch" "${flags[@]}"
bin=$(swift build --package-path Fuzz --scratch-path "$scratch" "${flags[@]}" --show-bin-path)

# Inputs as long as the largest real ones need (a PEM chain with its key is under 4 KiB), memory well
# below anything a bounded parser can reach from such input: a larger allocation is a finding.
max_len() {
  case "$1" in
    FuzzPEM) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

mkdir -p "$scratch/findings" "$scratch/logs"
failed=()
for name in "${targets[@]}"; do
  mkdir -p "$scratch/corpus/$name"
  log="$scratch/logs/$name.log"
  echo "== $name: ${seconds}s, max_len $(max_len "$name")"
  status=0
  # libFuzzer prints the stack of a crash; Swift's backtracer would be reported by ASan as it reads freed memory.
  SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=1:handle_sigill=1 "$bin/$name" "$scratch/corpus/$name" "Fuzz/Corpus/$name" \
    -max_total_time="$seconds" -max_len="$(max_len "$name")" -rss_limit_mb=2048 -malloc_limit_mb=256 \
    -dict="Fuzz/Dictionaries/$name.dict" -timeout=10 -print_final_stats=1 -artifact_prefix="$scratch/findings/$name-" >"$log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|^#[0-9]+[[:space:]]+DONE' "$log" | sed 's/^/   /' || true
  echo "   corpus: $(ls "$scratch/corpus/$name" | wc -l) found + $(ls "Fuzz/Corpus/$name" | wc -l) seeds"
  if [ "$status" -ne 0 ]; then
    failed+=("$name")
    echo "   FINDING (exit $status), log: $log"
    grep -E '^(==[0-9]+==ERROR|SUMMARY|Fatal error|.*invariant broken|artifact_prefix|Test unit written)' "$log" | head -5 | sed 's/^/   /'
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "findings in: ${failed[*]}"
  exit 1
fi
echo "no findings"
