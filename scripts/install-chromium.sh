#!/bin/sh
# Install Debian's chromium for the headless render check in tests/wsm/report/test_report.py (idempotent).
# Without root or apt-get it explains why and exits 0: the test then skips with a reason.
set -eu

if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
    echo "install-chromium: chromium is already installed ($(command -v chromium || echo /usr/bin/chromium))"
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install-chromium: not root, cannot apt-get install chromium; tests/wsm/report/test_report.py will skip its render check"
    echo "install-chromium: as root run: apt-get update -qq && apt-get install -y -qq chromium"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get (not Debian/Ubuntu); install chromium by hand, or the render check skips"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium
echo "install-chromium: installed $(command -v chromium)"
