#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser test (driven by Python Playwright with
# executable_path=/usr/bin/chromium). Never `playwright install`: nothing is downloaded outside apt.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y --no-install-recommends chromium
/usr/bin/chromium --version
