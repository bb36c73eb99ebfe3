#!/bin/bash
# stdout closed early (piped into head, grep -m1, a dropped log shipper): the first step written after
# that crashes the tool (FileHandle.write try!, SIGILL) between ACL SETUSER and ACL SAVE; no state line,
# no resume command. Expected: the rotation goes on (or stops cleanly and says where things stand).
. "$(dirname "$0")/common.sh"
P1=$(free_port); start p "$P1"
ROT --port "$P1" --wait 2 --json 2>"$W/err" | head -1 >/dev/null; echo "exit status: ${PIPESTATUS[0]}"
grep -m1 "Fatal error" "$W/err"
echo "alice now holds $(admin "$P1" ACL GETUSER alice | sed -n '/^passwords$/,/^commands$/p' | grep -c '^[0-9a-f]\{64\}$') password(s); file: $(grep version "$W/alice.pw")"
