#!/usr/bin/env bash
# The browser tests (tests/e2e) drive Debian's Chromium through Playwright; install it if missing.
# `playwright install` is never run: no browser downloads.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
