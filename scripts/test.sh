#!/usr/bin/env bash
# The README's test command: installs what the real peers need (Debian packages, as root), the
# npm dependencies (the kerberos addon built from source against libkrb5-dev), then lints, type-
# checks, builds and runs the whole test suite under the project's own Node 22.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
# prebuild-install would look up a prebuilt binary on GitHub; build the kerberos addon locally.
export npm_config_build_from_source=true
# npm install, not npm ci: the registry this project installs from lacks some platform builds of
# @biomejs/cli-* (optional), so the lock file cannot list them and npm ci would refuse it.
npm install --no-audit --no-fund
npm run lint
npm run typecheck
npm run build
npm test
