#!/usr/bin/env bash
# Install the system tools the tests use, only those missing: a no-op on a ready machine.
# Nothing here is strictly required today (each test that needs a tool skips without it), so a
# machine without apt, or offline, gets a warning and the build goes on.
set -uo pipefail

# One line per tool: the Debian package, required or optional, then the shell check that proves
# the tool is here. The check is the rest of the line, so it may hold pipes and quotes freely.
# A required tool that cannot be installed stops the build.
TOOLS=(
    # Tests start their own Redis when 127.0.0.1:6379 does not answer.
    "redis-server optional command -v redis-server"
    # The clearing report is rendered to PNG in headless Chromium; without a CJK font its
    # Chinese text comes out as empty boxes.
    "chromium optional command -v chromium"
    # The console's browser test drives Chromium through Selenium with Debian's matching driver.
    "chromium-driver optional command -v chromedriver"
    # grep reads all of fc-list's output (no -q): stopping at the first match cut fc-list off
    # mid-write, and under pipefail its SIGPIPE read as "missing".
    "fonts-noto-cjk optional fc-list 2>/dev/null | grep -i 'noto sans cjk' >/dev/null"
    # `make promtool` checks and unit-tests the alert rules; Debian ships promtool in prometheus.
    "prometheus optional command -v promtool"
    # `make bench-wrk` and tests/load/test_wrk_smoke.py drive the gateway with wrk (C, LuaJIT).
    "wrk optional command -v wrk"
    # `make cluster` and tests/cluster/: the loopback high-availability cluster (docs/deployment.md).
    "patroni optional command -v patroni"
    "etcd-server optional command -v etcd"
    "haproxy optional command -v haproxy"
    "redis-sentinel optional command -v redis-sentinel"
)

missing() {  # prints "package required?" for each tool whose check fails
    local entry pkg level check
    for entry in "${TOOLS[@]}"; do
        read -r pkg level check <<<"$entry"
        eval "$check" >/dev/null 2>&1 || echo "$pkg $level"
    done
}

need=$(missing)
[ -z "$need" ] && exit 0

pkgs=$(cut -d' ' -f1 <<<"$need" | tr '\n' ' ')
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing $pkgs"
    $SUDO apt-get update -qq || echo "warning: apt-get update failed" >&2
    # Only promtool is wanted from the prometheus package, not its server; the cluster's servers
    # (etcd, HAProxy, Sentinel, Patroni) are started by `make cluster` on free ports, never as
    # services on their default ones: a policy-rc.d (when the machine has none) denies starting
    # them during the install, and they are not enabled at boot.
    services=""  # the services of the packages installed now, none that was there before
    for pkg in $pkgs; do
        case "$pkg" in
            etcd-server) services="$services etcd" ;;
            prometheus | haproxy | redis-sentinel | patroni) services="$services $pkg" ;;
        esac
    done
    guard=""
    if [ -n "$services" ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        guard=/usr/sbin/policy-rc.d
        # shellcheck disable=SC2016  # $a belongs to the generated script
        printf '#!/bin/sh\nfor a; do case "${a%%.service}" in prometheus|etcd|haproxy|redis-sentinel|patroni) exit 101;; esac; done\nexit 0\n' \
            | $SUDO tee "$guard" >/dev/null && $SUDO chmod 755 "$guard"
    fi
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs \
        || echo "warning: apt-get could not install $pkgs" >&2
    # Fonts just installed can be missing from fc-list until the cache is rebuilt (seen on a
    # fresh machine: the CJK fonts were reported missing right after their install).
    if command -v fc-cache >/dev/null 2>&1; then $SUDO fc-cache -f >/dev/null 2>&1 || true; fi
    if [ -n "$guard" ]; then
        $SUDO rm -f "$guard"
        if command -v systemctl >/dev/null 2>&1; then
            for service in $services; do
                $SUDO systemctl disable --now "$service.service" >/dev/null 2>&1 || true
            done
        fi
    fi
else
    echo "warning: no apt-get to install $pkgs" >&2
fi

still=$(missing)
if grep -q ' required$' <<<"$still"; then
    echo "error: required system tools missing: $(grep ' required$' <<<"$still" | cut -d' ' -f1 | tr '\n' ' ')" >&2
    exit 1
fi
[ -n "$still" ] && echo "warning: still missing $(cut -d' ' -f1 <<<"$still" | tr '\n' ' '); the tests that need them will skip" >&2
exit 0
