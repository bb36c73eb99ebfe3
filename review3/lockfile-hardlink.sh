#!/bin/bash
# The lock file is opened without checking what it is (regular file, one link, owned by us): a
# <password file>.lock that is a hard link -- here to the password file itself (a backup/sync tool,
# or whoever owns the directory) -- is truncated and overwritten by the journal.
# Publish then fails before the rename (the directory is made immutable, as a read-only or full
# filesystem would), the take-back "succeeds", the journal is cleared -- and the password file is
# now EMPTY while the tool says "state: nothing was changed".
. "$(dirname "$0")/lib.sh"
P=$(freeport); node p $P; start p $P
ln "$WORK/app.pw" "$WORK/app.pw.lock"
touch "$WORK/out"
chattr +i "$WORK"; trap 'chattr -i "$WORK"; cleanup' EXIT
timeout 120 "$TOOL" rotate password --port $P --admin-user admin --admin-password-file "$WORK/admin.pw" \
  --user app --password-file "$WORK/app.pw" --wait 3
echo "exit=$?"
echo "--- password file now ($(stat -c %s "$WORK/app.pw") bytes):"; cat "$WORK/app.pw"
echo "--- a client reading it logs in with: '$(filepw)' -> $(auth $P "$(filepw)")"
