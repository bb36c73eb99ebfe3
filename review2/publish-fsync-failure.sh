#!/bin/bash
# The rename succeeded, the directory fsync failed: publish() "takes the password back" although the
# file already holds it. Expected: every node accepts the file's password. Actual: WRONGPASS everywhere,
# "state: nothing was changed", exit 2, no resume command.
. "$(dirname "$0")/common.sh"
gcc -shared -fPIC -o "$W/dirfsync_eio.so" "$(dirname "$0")/dirfsync_eio.c" -ldl
P1=$(free_port); start p "$P1"
(cd "$W" && LD_PRELOAD="$W/dirfsync_eio.so" ROT --port "$P1" --wait 2); echo "exit status: $?"
grep version "$W/alice.pw"
echo "file's password on :$P1 -> $(login "$P1")"
echo "old password on :$P1 -> $(redis-cli -p "$P1" --user alice --pass oldpw --no-auth-warning PING 2>&1 | tail -1)"
