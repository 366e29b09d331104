#!/usr/bin/env bash
# Headless Chromium for the browser tests (`make test` runs this before them): Debian's
# `chromium` package, which Playwright drives through `executable_path` (Playwright's own
# browser download needs a network this project does not count on).
#
# Idempotent and quiet when Chromium is already there: prints its path on stdout and nothing
# else (progress goes to stderr). Installing it needs root or passwordless sudo, once.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { echo "chromium.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

found() {
    local path
    for path in "${CHROMIUM:-}" "$(command -v chromium || true)" /usr/bin/chromium; do
        if [ -n "$path" ] && [ -x "$path" ]; then
            echo "$path"
            return 0
        fi
    done
    return 1
}

if found; then
    exit 0
fi

command -v apt-get >/dev/null || die "Chromium is missing and there is no apt-get: install
Chromium yourself and set CHROMIUM=/path/to/chromium."
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    die "Chromium is not installed, and installing it needs root.
Run 'sudo apt-get install chromium' once, then 'make test' again."
fi
# Fonts: Latin (fonts-liberation, which chromium only recommends) and Korean, so that the
# screenshots of the Korean pages show text rather than empty boxes.
log "installing Debian's chromium package and fonts (apt-get; a minute or two, once)"
start=$SECONDS
apt_opts=(-q -o DPkg::Lock::Timeout=300)
"${SUDO[@]}" apt-get "${apt_opts[@]}" update >&2 || die "apt-get update failed"
"${SUDO[@]}" apt-get "${apt_opts[@]}" install -y --no-install-recommends \
    chromium fonts-liberation fonts-noto-cjk >&2 \
    || die "apt-get install chromium failed"
log "installed in $((SECONDS - start)) s"
found || die "chromium was installed but is not on PATH"
