# Shared by the review2 reproductions: servers in a temp dir on free loopback ports, stopped by PID.
set -u
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/.build/debug/redis-rotation}
W=$(mktemp -d /tmp/review2-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
# start NAME PORT [config lines...]: alice (oldpw) and admin (adminpw), users in an aclfile.
start() {
    local n=$1 p=$2; shift 2
    mkdir -p "$W/$n"
    printf 'user admin on >adminpw ~* &* +@all\nuser alice on >oldpw ~* &* +@all\nuser default off\n' > "$W/$n/users.acl"
    { echo "port $p"; echo "bind 127.0.0.1"; echo "dir $W/$n"; echo "aclfile $W/$n/users.acl"; echo 'save ""'; for l in "$@"; do echo "$l"; done; } > "$W/$n/redis.conf"
    redis-server "$W/$n/redis.conf" --daemonize yes --pidfile "$W/$n/redis.pid" --logfile "$W/$n/redis.log"
    for _ in $(seq 1 50); do [ -s "$W/$n/redis.pid" ] && redis-cli -p "$p" --user admin --pass adminpw --no-auth-warning PING >/dev/null 2>&1 && break; sleep 0.1; done
    PIDS+=("$(cat "$W/$n/redis.pid")")
}
admin() { local p=$1; shift; redis-cli -p "$p" --user admin --pass adminpw --no-auth-warning "$@"; }
filepw() { sed -n 's/^password=//p' "$W/alice.pw"; }
# login PORT: whether the file's password logs alice in on that node
login() { redis-cli -p "$1" --user alice --pass "$(filepw)" --no-auth-warning PING 2>&1 | tr -s "\n" " " | sed "s/ $//"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
printf 'password=oldpw\nversion=v1\n' > "$W/alice.pw"; chmod 600 "$W/alice.pw"
echo adminpw > "$W/admin.pw"
ROT() { timeout 120 "$B" rotate password --admin-user admin --admin-password-file "$W/admin.pw" --user alice --password-file "$W/alice.pw" "$@"; }
