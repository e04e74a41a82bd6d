#!/usr/bin/env bash
# Install the system tools the tests use, only when missing. A fresh machine gets them from
# Debian's packages; a machine without apt keeps going and the tests that need a tool say so.
set -uo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The clearing report is rendered to PNG in headless Chromium; CJK fonts make its text legible.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
fc-list 2>/dev/null | grep -qi "noto sans cjk" || need+=(fonts-noto-cjk)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: missing ${need[*]} and no apt-get; tests needing them will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${need[*]}"
$SUDO apt-get update -qq || echo "warning: apt-get update failed" >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" \
    || echo "warning: could not install ${need[*]}; tests needing them will be skipped" >&2
exit 0
