#!/bin/bash
# Two rotate runs of the same user at once (bounded: 20 pairs). Expected: the file's password works on
# every node after each pair. Actual: within a few pairs a node rejects it, and each run's "state:" line
# claims the servers hold its own version.
. "$(dirname "$0")/common.sh"
P1=$(free_port); P2=$(free_port)
start p "$P1"; start r "$P2" "replicaof 127.0.0.1 $P1" "masteruser admin" "masterauth adminpw"
for _ in $(seq 1 100); do admin "$P1" ROLE | grep -q "^$P2\$" && break; sleep 0.1; done
for i in $(seq 1 20); do
    ROT --port "$P1" --wait 3 > "$W/a.out" 2> "$W/a.err" & a=$!
    ROT --port "$P1" --wait 3 > "$W/b.out" 2> "$W/b.err" & b=$!
    wait $a; ra=$?; wait $b; rb=$?
    if [ "$(login "$P1")" != PONG ] || [ "$(login "$P2")" != PONG ]; then
        echo "pair $i: exit $ra/$rb; file holds $(grep version "$W/alice.pw")"
        echo "primary -> $(login "$P1"); replica -> $(login "$P2")"
        echo "--- run A stderr"; cat "$W/a.err"; echo "--- run B stderr"; cat "$W/b.err"
        exit 1
    fi
    # a clean state for the next pair
    ROT --port "$P1" --wait 3 >/dev/null 2>&1
done
echo "no lock-out in 20 pairs"
