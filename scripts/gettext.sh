#!/usr/bin/env bash
# Compiles the interface's translations (locale/<lang>/LC_MESSAGES/django.po -> django.mo) with
# Django's compilemessages, which runs GNU gettext's msgfmt. `make run` and `make test` run this
# before anything reads a page: the .mo files are built, never committed.
#
# Idempotent, and quick when nothing changed (compilemessages skips a .mo newer than its .po).
# It:
#   1. installs Debian's `gettext` package when `msgfmt` is missing (root or sudo);
#   2. runs `manage.py compilemessages` with the given Python (default .venv/bin/python) on the
#      project's own catalogues only (not the virtualenv's packages).
#
# Usage: bash scripts/gettext.sh [PYTHON]
set -euo pipefail

PY="${1:-.venv/bin/python}"

export DEBIAN_FRONTEND=noninteractive

log() { echo "gettext.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if ! command -v msgfmt >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "msgfmt (GNU gettext) is not installed, and installing it needs root.
Run 'sudo apt-get install gettext' once, then try again."
    fi
    command -v apt-get >/dev/null || die "msgfmt is missing and there is no apt-get: install GNU gettext."
    log "installing Debian's gettext package (msgfmt compiles the translations)"
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends gettext >&2
fi

cd "$(dirname "$0")/.."
# -l en -l ko: the project's languages (settings.LANGUAGES); --ignore keeps compilemessages out
# of the virtualenv, whose packages ship catalogues of their own (already compiled).
"$PY" manage.py compilemessages -l en -l ko \
    --ignore=.venv --ignore=var --ignore=staticfiles --ignore=node_modules >&2
