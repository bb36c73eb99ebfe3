#!/bin/bash
# The password file grants its client read access by a POSIX ACL entry (setfacl -m u:nobody:r), as
# is common when the client runs under its own account. Publish recreates the file with the mode
# and owner only: the ACL entry is lost, the client can no longer read the file, and with
# --kill-stragglers the rotation removes the password the client still holds. Exit 0, no warning.
# (OPERATOR.md, publish: "clients ... never lose read access".)
. "$(dirname "$0")/lib.sh"
chmod 711 "$WORK"; chmod 0600 "$WORK/app.pw"
python3 - "$WORK/app.pw" <<'PY'
import os, struct, sys
e = lambda tag, perm, ident=0xFFFFFFFF: struct.pack("<HHI", tag, perm, ident)
acl = struct.pack("<I", 2) + e(0x01, 6) + e(0x02, 4, 65534) + e(0x04, 0) + e(0x10, 4) + e(0x20, 0)
os.setxattr(sys.argv[1], "system.posix_acl_access", acl)
PY
P=$(freeport); node p $P; start p $P
echo "mode $(stat -c %a "$WORK/app.pw"); client (uid nobody) reads before: $(su nobody -s /bin/sh -c "sed -n 's/^version=//p' $WORK/app.pw" 2>&1)"
exec 3<>/dev/tcp/127.0.0.1/$P; printf 'AUTH app oldpassword\r\n' >&3; read -r -t 2 line <&3; echo "client connection: $line"
timeout 120 "$TOOL" rotate password --port $P --admin-user admin --admin-password-file "$WORK/admin.pw" \
  --user app --password-file "$WORK/app.pw" --wait 2 --kill-stragglers
echo "exit=$?  mode now: $(stat -c %a "$WORK/app.pw"), acl xattr: $(python3 -c "import os,sys;print(len(os.getxattr(sys.argv[1],'system.posix_acl_access')))" "$WORK/app.pw" 2>&1 | tail -1)"
echo "client (uid nobody) reads after: $(su nobody -s /bin/sh -c "cat $WORK/app.pw" 2>&1)"
echo "client reconnects with the only password it has: $(auth $P oldpassword)"
