#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (never `playwright install`,
# which downloads a browser of its own): install the distribution's package when missing.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
