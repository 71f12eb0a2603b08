#!/usr/bin/env bash
# Regenerates test/fixtures/issuers: two client-certificate CAs (A, B; names with a comma and
# non-ASCII text, as real ones have) and a client certificate for alice from each, for the T3 tests
# of the server's acceptable CAs. Test-only material; the keys are not secrets.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/test/fixtures/issuers"
mkdir -p "$out"
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT; cd "$d"
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
ec ca-a.key; ec ca-b.key
openssl req -x509 -new -key ca-a.key -out ca-a.pem -days 36500 -utf8 -subj "/C=FR/O=Example A, Inc./CN=Test CA A" -addext basicConstraints=critical,CA:TRUE
openssl req -x509 -new -key ca-b.key -out ca-b.pem -days 36500 -utf8 -subj "/O=Exämple B/OU=Clients/CN=Test CA B" -addext basicConstraints=critical,CA:TRUE
printf "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n" > cli.ext
for ca in a b; do
  ec "client-$ca.key"
  openssl req -new -key "client-$ca.key" -out "client-$ca.csr" -subj "/CN=alice"
  openssl x509 -req -in "client-$ca.csr" -CA "ca-$ca.pem" -CAkey "ca-$ca.key" -set_serial "0x$(openssl rand -hex 8)" -out "client-$ca.pem" -days 36500 -extfile cli.ext
done
cp ca-a.pem ca-b.pem client-a.pem client-a.key client-b.pem client-b.key "$out/"
