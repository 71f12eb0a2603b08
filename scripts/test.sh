#!/usr/bin/env bash
# The README's test command: installs what the real peers need (Debian packages, as root), the
# npm dependencies (the kerberos addon built from source against libkrb5-dev), then lints, type-
# checks, builds and runs the whole test suite under the project's own Node 22.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
# prebuild-install would look up a prebuilt binary on GitHub; build the kerberos addon locally.
export npm_config_build_from_source=true
npm ci --no-audit --no-fund
npm run lint
npm run typecheck
npm run build
npm test
