#!/bin/bash
# The replica authenticates to its primary as the rotated user (masteruser alice / masterauth, or the
# default user with requirepass). The replication link is the straggler; --kill-stragglers kills it,
# and the replica, which still holds the old password in masterauth, can never reconnect.
# Expected: refused (or masterauth updated with CONFIG SET + REWRITE on each replica). Actual: done.
. "$(dirname "$0")/common.sh"
P1=$(free_port); P2=$(free_port)
start p "$P1"; start r "$P2" "replicaof 127.0.0.1 $P1" "masteruser alice" "masterauth oldpw"
for _ in $(seq 1 100); do admin "$P2" INFO replication | grep -q "master_link_status:up" && break; sleep 0.1; done
admin "$P2" INFO replication | grep master_link_status
ROT --port "$P1" --wait 1 --kill-stragglers; echo "exit status: $?"
sleep 3
admin "$P2" INFO replication | grep master_link_status
grep -m1 -i "auth" "$W/r/redis.log" | tail -1; grep -i "auth" "$W/r/redis.log" | tail -1
