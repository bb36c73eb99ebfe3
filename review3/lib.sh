# Shared helpers for review3 reproductions. Starts redis-server processes on free 127.0.0.1 ports
# in a temp dir; stops only those (by PID) on exit.
set -u
TOOL=${TOOL:-/work/wt-review3/.build/debug/redis-rotation}
WORK=$(mktemp -d /tmp/review3.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# node NAME PORT [replicaof-port]  -- aclfile with admin, app (password "old"), repl users
node() {
  local name=$1 port=$2 master=${3:-}
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/users.acl" <<ACL
user default off
user admin on >adminpw ~* &* +@all
user app on >oldpassword ~* &* +@all
user repl on >replpw +psync +replconf +ping
ACL
  { echo "port $port"; echo "bind 127.0.0.1"; echo "dir $WORK/$name"; echo "aclfile $WORK/$name/users.acl"
    echo "save \"\""; echo "appendonly no"
    if [ -n "$master" ]; then echo "replicaof 127.0.0.1 $master"; echo "masteruser repl"; echo "masterauth replpw"; fi
  } > "$WORK/$name/redis.conf"
}
start() { redis-server "$WORK/$1/redis.conf" > "$WORK/$1/log" 2>&1 & PIDS+=($!); eval "PID_$1=$!"; for i in $(seq 50); do redis-cli -p "$2" --user admin --pass adminpw PING 2>/dev/null | grep -q PONG && return; sleep 0.1; done; echo "node $1 did not start"; exit 3; }
echo "password=adminpw" > "$WORK/admin.pw"; chmod 600 "$WORK/admin.pw"
printf 'password=oldpassword\nversion=v0\n' > "$WORK/app.pw"; chmod 600 "$WORK/app.pw"
auth() { redis-cli -p "$1" --user app --pass "$2" --no-auth-warning PING 2>&1; }
filepw() { sed -n 's/^password=//p' "$WORK/app.pw"; }
