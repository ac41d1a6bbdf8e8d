#!/usr/bin/env bash
# Make sure Debian's chromium is installed for the report's headless-browser tests (run by .ci/run).
# The tests drive it through Playwright with executable_path; Playwright's own browsers are never
# downloaded. Installs the `chromium` package with apt-get when /usr/bin/chromium is missing
# (needs root); WATTSCALE_CHROMIUM names another binary and skips the check.
set -euo pipefail

chromium="${WATTSCALE_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$chromium" ]]; then
    echo "chromium.sh: using $chromium ($("$chromium" --version 2>/dev/null || echo 'version unknown'))" >&2
    exit 0
fi
if [[ -n "${WATTSCALE_CHROMIUM:-}" ]]; then
    echo "chromium.sh: WATTSCALE_CHROMIUM=$WATTSCALE_CHROMIUM is not an executable file" >&2
    exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "chromium.sh: /usr/bin/chromium is missing and we are not root; install the 'chromium' package" >&2
    exit 1
fi
echo "chromium.sh: installing chromium with apt-get" >&2
DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
"$chromium" --version >&2
