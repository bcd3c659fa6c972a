#!/usr/bin/env bash
# The storefront's browser test (tests/browser/storefront.spec.mjs): Debian's
# Chromium driven headless by playwright-core against `target/debug/shop all`.
#
#   bash .ci/browser.sh
#
# Installs what is missing, and only that: chromium from apt, and the npm
# packages of tests/browser (npm ci, from its package-lock.json) unless
# the locked versions are already installed. Needs Node.js 20 or later
# (playwright-core's minimum) and a built debug binary: run it after
# `cargo test --workspace --all-targets --locked`, which builds it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $CHROMIUM ]]; then
  echo "installing chromium (apt)"
  if ! apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
  fi
fi

if ! command -v node >/dev/null || (( $(node -p 'process.versions.node.split(".")[0]') < 20 )); then
  echo "the browser test needs Node.js 20 or later (playwright-core); found: $(node --version 2>/dev/null || echo none)" >&2
  exit 1
fi

# `npm ls` fails when an installed package is missing or not the locked one.
if ! (cd tests/browser && npm ls --silent >/dev/null 2>&1); then
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi

if [[ ! -x ${CARGO_TARGET_DIR:-target}/debug/shop ]]; then
  echo "no ${CARGO_TARGET_DIR:-target}/debug/shop: build it first (cargo build, or the README's test command)" >&2
  exit 1
fi

CHROMIUM=$CHROMIUM node tests/browser/storefront.spec.mjs
