#!/bin/bash
# rotate ca on a primary with a TLS replica: the tool switches only the node named and then drops the
# old CA from the bundle; the replica still presents its old-CA certificate, which the published
# bundle no longer trusts. Expected: refused, or every node switched. Actual: "rolled over", exit 0.
. "$(dirname "$0")/common.sh"
T="$W/tls"; mkdir -p "$T"; cd "$T"
ext() { printf "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n" > s.ext; }
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca1.key -out ca1.crt -days 30 -subj "/CN=Old CA" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca2.key -out ca2.crt -days 30 -subj "/CN=New CA" 2>/dev/null
ext
for n in p r; do openssl req -newkey rsa:2048 -nodes -keyout $n.key -out $n.csr -subj "/CN=old-$n" 2>/dev/null; openssl x509 -req -in $n.csr -CA ca1.crt -CAkey ca1.key -CAcreateserial -out $n.crt -days 10 -extfile s.ext 2>/dev/null; done
openssl req -newkey rsa:2048 -nodes -keyout pn.key -out pn.csr -subj "/CN=new-p" 2>/dev/null; openssl x509 -req -in pn.csr -CA ca2.crt -CAkey ca2.key -CAcreateserial -out pn.crt -days 10 -extfile s.ext 2>/dev/null
cp ca1.crt "$W/bundle.pem"; cd "$W"
P1=$(free_port); P1T=$(free_port); P2=$(free_port); P2T=$(free_port)
start p "$P1" "tls-port $P1T" "tls-cert-file $T/p.crt" "tls-key-file $T/p.key" "tls-ca-cert-file $T/ca1.crt" "tls-auth-clients no"
start r "$P2" "tls-port $P2T" "tls-cert-file $T/r.crt" "tls-key-file $T/r.key" "tls-ca-cert-file $T/ca1.crt" "tls-auth-clients no" "replicaof 127.0.0.1 $P1" "masteruser admin" "masterauth adminpw"
for _ in $(seq 1 100); do admin "$P1" ROLE | grep -q "^$P2\$" && break; sleep 0.1; done
timeout 60 "$B" rotate ca --port "$P1" --admin-user admin --admin-password-file "$W/admin.pw" --bundle-file "$W/bundle.pem" \
    --new-ca-file "$T/ca2.crt" --new-cert-file "$T/pn.crt" --new-key-file "$T/pn.key" --user alice --wait 5 --reload-grace 0
echo "exit status: $?"
for port in "$P1T" "$P2T"; do echo "handshake with the published bundle to :$port -> $(echo | openssl s_client -connect 127.0.0.1:$port -CAfile "$W/bundle.pem" 2>/dev/null | grep -m1 'Verify return code')"; done
