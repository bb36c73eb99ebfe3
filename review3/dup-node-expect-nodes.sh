#!/bin/bash
# Defect: a node reached under two spellings is counted twice, so --expect-nodes passes while a
# replica is down; the down replica keeps only the old password and rejects the file's password.
# Topology: primary P, replicas R1 (up) and R2 (DOWN). Operator expects 3 nodes, points the tool
# at R1 as "localhost" (the primary lists it as 127.0.0.1).
. "$(dirname "$0")/lib.sh"
P=$(freeport); R1=$(freeport); R2=$(freeport)
node p $P; node r1 $R1 $P; node r2 $R2 $P
start p $P; start r1 $R1
sleep 1
echo "--- rotate (R2 is down), --expect-nodes 3, pointed at localhost:$R1"
timeout 120 "$TOOL" rotate password --host localhost --port $R1 --admin-user admin --admin-password-file "$WORK/admin.pw" \
  --user app --password-file "$WORK/app.pw" --expect-nodes 3 --wait 5
echo "exit=$?"
echo "--- R2 comes back (it never got the new password)"
start r2 $R2
NEW=$(filepw)
echo "primary  with file password: $(auth $P "$NEW")"
echo "replica1 with file password: $(auth $R1 "$NEW")"
echo "replica2 with file password: $(auth $R2 "$NEW")   <- a client holding the file's password is refused"
