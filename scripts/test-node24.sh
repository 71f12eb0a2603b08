#!/usr/bin/env bash
# The suite again under Node 24 (users run 22 and 24; the project's own Node is 22, a devDependency):
# the newest 24.x build from the npm registry (the node-<platform>-<arch> package the `node` package
# itself installs), unpacked into .cache/ and reused while it is the newest. Without coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
case "$(uname -s)" in Linux) platform=linux ;; Darwin) platform=darwin ;; *) platform= ;; esac
case "$(uname -m)" in x86_64 | amd64) arch=x64 ;; aarch64 | arm64) arch=arm64 ;; *) arch= ;; esac
if [ -z "$platform" ] || [ -z "$arch" ]; then
  echo "test-node24: no Node 24 build on the npm registry for $(uname -s) $(uname -m)" >&2
  # A peer that is missing fails CI; a laptop may go on.
  if [ "${CI:-}" = true ]; then exit 1; fi
  exit 0
fi
pkg="node-$platform-$arch"
version=$(npm view "$pkg@24" version --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s);console.log(Array.isArray(v)?v[v.length-1]:v)})')
dir=".cache/node-$version"
if [ ! -x "$dir/bin/node" ]; then
  rm -rf .cache/node-24.* && mkdir -p "$dir"
  tarball=$(npm pack "$pkg@$version" --pack-destination .cache --silent)
  tar -xzf ".cache/$tarball" -C "$dir" --strip-components=1
  rm ".cache/$tarball"
fi
echo "test-node24: $("$dir/bin/node" --version)"
# vitest's workers and the tests' child processes run process.execPath: Node 24 throughout.
PATH="$PWD/$dir/bin:$PATH" "$dir/bin/node" node_modules/vitest/vitest.mjs run
