#!/bin/bash
# A least-privilege administrator without +acl|dryrun: the advance permission check degrades to a
# warning, so a missing ACL SAVE permission stops the run half way, and the added (unpublished)
# password is NOT taken back (unlike a failed verification): the server accepts a password no file
# holds, until the next run.
. "$(dirname "$0")/lib.sh"
P=$(freeport); node p $P
sed -i 's/^user admin .*/user admin on >adminpw ~* \&* +@all -acl|save -acl|dryrun/' "$WORK/p/users.acl"
start p $P
timeout 120 "$TOOL" rotate password --port $P --admin-user admin --admin-password-file "$WORK/admin.pw" \
  --user app --password-file "$WORK/app.pw" --wait 2
echo "exit=$?"
echo "passwords app holds now: $(redis-cli -p $P --user admin --pass adminpw --no-auth-warning ACL GETUSER app | sed -n '/passwords/{n;p;n;p}' | wc -l) (1 before the run)"
echo "file version: $(sed -n 's/^version=//p' "$WORK/app.pw")"
