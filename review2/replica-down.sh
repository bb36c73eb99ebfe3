#!/bin/bash
# A replica that is down (restarting, maintenance) while the tool runs is not listed by ROLE and is
# skipped silently ("done ... on 1 node(s)"). When it comes back it rejects the file's password.
. "$(dirname "$0")/common.sh"
P1=$(free_port); P2=$(free_port)
start p "$P1"; start r "$P2" "replicaof 127.0.0.1 $P1" "masteruser admin" "masterauth adminpw"
for _ in $(seq 1 100); do admin "$P1" ROLE | grep -q "^$P2\$" && break; sleep 0.1; done
admin "$P2" SHUTDOWN NOSAVE; sleep 0.5
ROT --port "$P1" --wait 2; echo "exit status: $?"
redis-server "$W/r/redis.conf" --daemonize yes --pidfile "$W/r/redis.pid" --logfile "$W/r/redis.log"; sleep 0.5; PIDS+=("$(cat "$W/r/redis.pid")")
echo "file's password on primary :$P1 -> $(login "$P1")"
echo "file's password on replica :$P2 -> $(login "$P2")"
