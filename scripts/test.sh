#!/usr/bin/env bash
# The README's test command: installs what the real peers need (Debian packages, as root), the
# npm dependencies (the kerberos addon built from source against libkrb5-dev), then lints, type-
# checks, builds and runs the whole test suite under the project's own Node 22, then under Node 24.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
# npm install, not npm ci: the registry this project installs from lacks some platform builds of
# @biomejs/cli-* (optional), so the lock file cannot list them and npm ci would refuse it.
# The kerberos addon's install script (prebuild-install, the only one in the tree) would look up a
# prebuilt binary on GitHub; npm_config_build_from_source=kerberos makes it build locally against
# libkrb5-dev. npm warns about that variable (an "Unknown env config") in every command that sees
# it, so only npm install gets it, and only while the addon is not built.
if [ -e node_modules/kerberos/build/Release/kerberos.node ]; then
  npm install --no-audit --no-fund
else
  npm_config_build_from_source=kerberos npm install --no-audit --no-fund
fi
npm run lint
npm run typecheck
npm run build
npm test
# Users run Node 22 and 24: the whole suite again under the newest Node 24.
bash scripts/test-node24.sh
