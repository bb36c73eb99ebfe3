#!/bin/bash
# Users live in a file redis.conf includes (include users.conf). The tool picks CONFIG REWRITE, which
# appends every user to redis.conf; the next restart fails: "Duplicate user found". Expected: the
# server restarts and accepts the file's password (or the tool refuses this persistence up front).
. "$(dirname "$0")/common.sh"
P1=$(free_port); mkdir -p "$W/inc"
printf 'user admin on >adminpw ~* &* +@all\nuser alice on >oldpw ~* &* +@all\nuser default off\n' > "$W/inc/users.conf"
printf 'port %s\nbind 127.0.0.1\ndir %s\nsave ""\ninclude %s\n' "$P1" "$W/inc" "$W/inc/users.conf" > "$W/inc/redis.conf"
redis-server "$W/inc/redis.conf" --daemonize yes --pidfile "$W/inc/redis.pid" --logfile "$W/inc/redis.log"; sleep 0.5; PIDS+=("$(cat "$W/inc/redis.pid")")
ROT --port "$P1" --wait 2; echo "exit status: $?"
admin "$P1" SHUTDOWN NOSAVE; sleep 0.5
redis-server "$W/inc/redis.conf" --daemonize yes --pidfile "$W/inc/redis.pid" --logfile "$W/inc/redis.log"; sleep 0.5
[ -s "$W/inc/redis.pid" ] && PIDS+=("$(cat "$W/inc/redis.pid")")
echo "after a restart, file's password -> $(login "$P1")"
tail -3 "$W/inc/redis.log"
