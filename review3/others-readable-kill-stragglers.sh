#!/bin/bash
# Defect: a password file its client reads as "others" (mode 0604) is masked to 0600 only at
# publish, after the password was added; with --kill-stragglers the rotation then removes the old
# password and kills the client, which can no longer read the file: it holds only a password the
# server rejects. Nothing refuses this before the first change; the tool exits 0, "rotated".
. "$(dirname "$0")/lib.sh"
chmod 711 "$WORK"; chmod 0604 "$WORK/app.pw"
P=$(freeport); node p $P; start p $P
echo "client (uid nobody) reads the file before: $(su nobody -s /bin/sh -c "sed -n 's/^version=//p' $WORK/app.pw" 2>&1)"
# The client's connection, authenticated with what it read (a straggler: it cannot move).
exec 3<>/dev/tcp/127.0.0.1/$P; printf 'AUTH app oldpassword\r\n' >&3; read -r -t 2 line <&3; echo "client connection: $line"
timeout 120 "$TOOL" rotate password --port $P --admin-user admin --admin-password-file "$WORK/admin.pw" \
  --user app --password-file "$WORK/app.pw" --wait 2 --kill-stragglers
echo "exit=$?  mode now: $(stat -c %a "$WORK/app.pw")"
echo "client (uid nobody) reads the file after: $(su nobody -s /bin/sh -c "cat $WORK/app.pw" 2>&1)"
echo "client reconnects with the only password it has: $(auth $P oldpassword)"
