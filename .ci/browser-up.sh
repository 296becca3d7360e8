#!/usr/bin/env bash
# Install a real browser for the /training page test (tests/test_dashboard.py): Debian's chromium and
# chromium-driver (selenium comes from pip, the test extra). Never fails CI: if the packages cannot be
# installed, the reason goes to .ci/browser-unavailable and the browser test skips with it; without that
# file a missing browser in CI is a test failure.
set -uo pipefail
cd "$(dirname "$0")/.."
rm -f .ci/browser-unavailable
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "browser-up: $(chromium --version 2>/dev/null) already installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "needs root to apt-get install chromium chromium-driver" > .ci/browser-unavailable
elif ! out=$( (apt-get update -qq -o Acquire::Retries=3 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Acquire::Retries=3 chromium chromium-driver) 2>&1 ); then
    echo "apt-get install chromium chromium-driver failed: $(echo "$out" | tail -n 3 | tr '\n' ' ')" > .ci/browser-unavailable
elif ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "apt-get installed chromium chromium-driver but they are not on PATH" > .ci/browser-unavailable
fi
if [ -e .ci/browser-unavailable ]; then
    echo "browser-up: WARNING: $(cat .ci/browser-unavailable) -- the browser test will skip"
else
    echo "browser-up: $(chromium --version 2>/dev/null) installed"
fi
exit 0
