#!/usr/bin/env bash
# Regenerates src/reference-server/test-pki.ts: a test CA, a server certificate for localhost and
# 127.0.0.1, and a client certificate for alice. Test-only material; the keys are not secrets.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/src/reference-server/test-pki.ts"
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT; cd "$d"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 36500 -subj "/CN=multileg test CA" -addext basicConstraints=critical,CA:TRUE
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > srv.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 36500 -extfile srv.ext
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=alice"
printf "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n" > cli.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 36500 -extfile cli.ext
{
  echo "// Test-only PKI for the reference server and tests (loopback, 'localhost'). Not secret: never use outside tests."
  echo "// Regenerate with scripts/make-test-certs.sh."
  for n in ca.crt:CA_CERT server.crt:SERVER_CERT server.key:SERVER_KEY client.crt:CLIENT_CERT client.key:CLIENT_KEY; do
    printf 'export const %s = `%s\n`;\n' "${n##*:}" "$(cat "${n%%:*}")"
  done
} > "$out"
