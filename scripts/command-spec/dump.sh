#!/usr/bin/env bash
# Writes the command specification of the installed redis-server (COMMAND DOCS and COMMAND INFO, as
# JSON) to spec/, from a throwaway server on a Unix socket in a temporary directory. Run it when the
# pinned server changes, then scripts/command-spec/generate.py; both outputs are committed, so builds
# need no server.
set -euo pipefail
cd "$(dirname "$0")/../.."
directory=$(mktemp -d)
socket="$directory/redis.sock"
redis-server --port 0 --unixsocket "$socket" --save "" --appendonly no --dir "$directory" >"$directory/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$directory"' EXIT
for _ in $(seq 1 100); do
    redis-cli -s "$socket" PING >/dev/null 2>&1 && break
    sleep 0.05
done
version=$(redis-cli -s "$socket" --raw INFO server | awk -F: '/^redis_version:/ { sub("\r", "", $2); print $2 }')
series=$(echo "$version" | cut -d. -f1-2)
redis-cli -s "$socket" --json COMMAND DOCS | python3 -c 'import json,sys; json.dump(json.load(sys.stdin), sys.stdout, indent=1, sort_keys=True)' >"spec/redis-$series-command-docs.json"
redis-cli -s "$socket" --json COMMAND INFO | python3 -c 'import json,sys; json.dump(sorted(json.load(sys.stdin)), sys.stdout, indent=1)' >"spec/redis-$series-command-info.json"
echo "$version" >"spec/redis-$series-version.txt"
echo "spec/redis-$series-*: $(redis-cli -s "$socket" COMMAND COUNT) commands of redis-server $version"
