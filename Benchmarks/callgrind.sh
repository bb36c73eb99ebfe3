#!/usr/bin/env bash
# Instructions and allocations per operation, Swift next to the C floor, under valgrind --tool=callgrind.
#
# Wall-clock figures on a shared 2-core machine are noisy; callgrind's instruction counts are repeatable.
# Starts its own redis-server (plain port and TLS port, a throwaway CA made with openssl), builds the
# CallgrindProbe executable (release), and runs each mode twice under callgrind, with LOW and HIGH
# operations; (Ir(HIGH) - Ir(LOW)) / (HIGH - LOW) is the client's instructions per operation, with start-up
# and the warm-up cancelled out; allocations per operation (calls to malloc, calloc, realloc and the
# aligned allocators, from every thread) the same way. Only the client process is measured (not redis-server).
#
# Usage: Benchmarks/callgrind.sh [mode ...]     (default: the Swift and C floor pairs; nio-reconnect,
#        the bare-SwiftNIO reconnect of Sources/NIOFloor, and the pool modes on request)
#        PROBE=path measures an existing CallgrindProbe build instead of building one.
#        KEEP=1 keeps the callgrind.out files (for callgrind_annotate) in $WORK.
set -euo pipefail
cd "$(dirname "$0")"

# PROBE=/path/to/CallgrindProbe measures that build (an earlier commit's, for a before/after).
if [ -z "${PROBE:-}" ]; then
    swift build -c release --product CallgrindProbe 2>&1 | grep -E "error:|warning:" || true
    PROBE="$(swift build -c release --show-bin-path)/CallgrindProbe"
fi
[ -x "$PROBE" ] || { echo "no CallgrindProbe executable" >&2; exit 1; }

WORK="$(mktemp -d /tmp/callgrind-redisrotation.XXXXXX)"
# Valgrind 3.19 cannot read the DWARF 5 the Swift toolchain emits ("Possibly corrupted debuginfo"):
# measure a copy without debug info (symbols stay, so callgrind_annotate still names functions).
strip --strip-debug -o "$WORK/CallgrindProbe" "$PROBE"
PROBE="$WORK/CallgrindProbe"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# A CA and a server certificate for localhost / 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "/CN=Callgrind CA" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 1 \
    -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null

# Free ports: let the kernel pick two.
read -r PORT TLS_PORT < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

printf "user default off\nuser bench on >benchmark-password ~* &* +@all\n" > "$WORK/users.acl"
redis-server --bind 127.0.0.1 --port "$PORT" --tls-port "$TLS_PORT" --save "" --appendonly no \
    --tls-cert-file "$WORK/server.pem" --tls-key-file "$WORK/server.key" --tls-ca-cert-file "$WORK/ca.pem" \
    --tls-auth-clients no --dir "$WORK" --logfile "$WORK/redis.log" --aclfile "$WORK/users.acl" &
SERVER_PID=$!
for _ in $(seq 1 100); do
    redis-cli -p "$PORT" --user bench --pass benchmark-password --no-auth-warning PING 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
redis-cli -p "$PORT" --user bench --pass benchmark-password --no-auth-warning PING 2>/dev/null | grep -q PONG \
    || { echo "redis-server did not start:" >&2; tail -5 "$WORK/redis.log" >&2; exit 1; }

# mode LOW HIGH
counts() {
    case "$1" in
        *roundtrip) echo "100 1100" ;;
        swift-pool|swift-pool-tls|swift-pipelined) echo "640 6400" ;;
        *reconnect-tls|*resumed-tls) echo "5 55" ;;
        *reconnect) echo "10 210" ;;
    esac
}

instructions() { # mode count -> total Ir of the client, and its calls to the C allocator
    local mode=$1 count=$2 port=$PORT
    case "$mode" in *tls) port=$TLS_PORT ;; esac
    local out="$WORK/callgrind.out.$mode.$count"
    timeout 600 valgrind --tool=callgrind --callgrind-out-file="$out" "$PROBE" "$mode" "$count" "$port" "$WORK/ca.pem" \
        > "$WORK/$mode.$count.log" 2>&1 || { cat "$WORK/$mode.$count.log" >&2; return 1; }
    printf "%s %s\n" "$(grep -E "^(summary|totals):" "$out" | head -1 | awk '{print $2}')" "$(allocations "$out")"
}

# Calls to malloc, calloc, realloc and the aligned allocators, from every thread of the client: exact,
# unlike an allocator's own statistics, which count another thread's allocations only when its cache
# flushes. (Callers' call counts into each allocator entry point, from callgrind_annotate's call tree.)
allocations() {
    callgrind_annotate --tree=caller --threshold=100 "$1" 2>/dev/null | python3 -c '
import re, sys
total, block = 0, []
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip():
        block = []
        continue
    block.append(line)
    if "  *  " in line and re.search(r"malloc\.c:(malloc|calloc|realloc|_mid_memalign[.\w]*|posix_memalign|aligned_alloc) ", line):
        for caller in block[:-1]:
            count = re.search(r"\(([\d,]+)x\)", caller)
            if count and "malloc.c:" not in caller:
                total += int(count.group(1).replace(",", ""))
print(total)'
}

MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(swift-roundtrip c-roundtrip swift-reconnect c-reconnect swift-reconnect-tls c-reconnect-tls)

declare -A PER_OP
printf "%-22s %8s %8s %16s %16s\n" "mode" "low" "high" "instructions/op" "allocations/op"
for mode in "${MODES[@]}"; do
    read -r low high < <(counts "$mode")
    read -r a alloc_a < <(instructions "$mode" "$low")
    read -r b alloc_b < <(instructions "$mode" "$high")
    per=$(( (b - a) / (high - low) ))
    PER_OP[$mode]=$per
    printf "%-22s %8d %8d %16d %16s\n" "$mode" "$low" "$high" "$per" \
        "$(python3 -c "print(f'{($alloc_b - $alloc_a) / ($high - $low):.2f}')")"
done

echo
printf "%-16s %14s %14s %8s\n" "operation" "Swift" "C floor" "ratio"
for op in roundtrip reconnect reconnect-tls resumed-tls; do
    s=${PER_OP[swift-$op]:-}; c=${PER_OP[c-$op]:-}
    if [ -n "$s" ] && [ -n "$c" ]; then
        printf "%-16s %14d %14d %8s\n" "$op" "$s" "$c" "$(python3 -c "print(f'{$s/$c:.2f}')")"
    fi
done
if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $WORK"; fi
