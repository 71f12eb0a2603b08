#!/usr/bin/env bash
# Installs the real test peers used by test/lab (MIT KDC, Apache + mod_auth_gssapi + gss-ntlmssp,
# python3-gssapi, squid, curl, libkrb5-dev for the optional `kerberos` addon). Idempotent: installs only
# when something is missing. As root: apt-get. Otherwise: prints what is missing and the command to run.
# Exit status: non-zero on failure only when CI=true (so laptops keep going and tests skip loudly).
# Recipe and traps: /work/shared/notes/real-peers.md (project notes).
set -u

PACKAGES=(krb5-kdc krb5-admin-server krb5-user libkrb5-dev gss-ntlmssp python3-gssapi
          apache2 libapache2-mod-auth-gssapi squid nginx curl openssl)

missing=()
need() { # need <description> <test command...>
  local what=$1; shift
  if ! "$@" >/dev/null 2>&1; then missing+=("$what"); fi
}
have_file() { [ -e "$1" ]; }
have_exe() { [ -x "$1" ] || command -v "$1" >/dev/null 2>&1; }
ntlmssp_so() { ls /usr/lib/*/gssntlmssp/gssntlmssp.so /usr/lib64/gssntlmssp/gssntlmssp.so 2>/dev/null | grep -q .; }
krb5_header() { [ -e /usr/include/krb5.h ] || [ -e /usr/include/krb5/krb5.h ]; }

check() {
  missing=()
  need krb5kdc have_exe /usr/sbin/krb5kdc
  need kdb5_util have_exe /usr/sbin/kdb5_util
  need kadmin.local have_exe /usr/sbin/kadmin.local
  need kinit have_exe /usr/bin/kinit
  need apache2 have_exe /usr/sbin/apache2
  need htpasswd have_exe /usr/bin/htpasswd
  need mod_auth_gssapi have_file /usr/lib/apache2/modules/mod_auth_gssapi.so
  need mod_http2 have_file /usr/lib/apache2/modules/mod_http2.so
  need gss-ntlmssp ntlmssp_so
  need "python3-gssapi (/usr/bin/python3 -c 'import gssapi')" /usr/bin/python3 -c 'import gssapi'
  need squid have_exe /usr/sbin/squid
  need nginx have_exe /usr/sbin/nginx
  need curl have_exe /usr/bin/curl
  need openssl have_exe /usr/bin/openssl
  need "krb5.h (libkrb5-dev)" krb5_header
  need "gssapi/gssapi.h (libkrb5-dev)" have_file /usr/include/gssapi/gssapi.h
}

fail() {
  echo "install-peers: $*" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
  exit 0
}

check
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-peers: all real peers present"
  exit 0
fi

echo "install-peers: missing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-peers: not root; install them with:"
  echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PACKAGES[*]}"
  echo "  (then, if the optional 'kerberos' addon failed to build before: npm_config_build_from_source=true npm rebuild kerberos)"
  fail "peers missing and not root"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  fail "no apt-get here; install the equivalents of: ${PACKAGES[*]}"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update || fail "apt-get update failed"
apt-get install -y --no-install-recommends "${PACKAGES[@]}" || fail "apt-get install failed"
# The packages' services are not needed (the lab starts its own daemons on loopback); on systemd hosts stop them.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  for s in apache2 squid nginx krb5-kdc krb5-admin-server; do systemctl disable --now "$s" >/dev/null 2>&1 || true; done
fi

check
if [ ${#missing[@]} -ne 0 ]; then
  fail "still missing after install: ${missing[*]}"
fi
echo "install-peers: installed; all real peers present"
echo "install-peers: if the optional 'kerberos' addon is not built yet: npm_config_build_from_source=true npm rebuild kerberos"
