#!/usr/bin/env bash
# axe-core, the accessibility engine the browser tests inject into each page: fetched once
# from the npm registry at a pinned version, its tarball checked against the registry's
# sha512 integrity, and kept under var/ (git-ignored). Prints the path of axe.min.js on
# stdout (progress goes to stderr). Idempotent: quick and offline once the file is there.
#
# To upgrade: set VERSION and INTEGRITY from `npm view axe-core@<version> dist.integrity`.
set -euo pipefail

VERSION=4.14.1
INTEGRITY="sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="
URL="https://registry.npmjs.org/axe-core/-/axe-core-$VERSION.tgz"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/var/axe-core-$VERSION"
JS="$DIR/axe.min.js"

log() { echo "axe.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ -s "$JS" ]; then
    echo "$JS"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log "fetching axe-core $VERSION from the npm registry"
# Python rather than curl and openssl: it is the one tool this project already requires.
python3 - "$URL" "$tmp/axe.tgz" <<'PY' || die "could not download $URL"
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as answer, open(sys.argv[2], "wb") as out:
    out.write(answer.read())
PY
actual="sha512-$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' \
    "$tmp/axe.tgz")"
[ "$actual" = "$INTEGRITY" ] || die "integrity mismatch for $URL: got $actual"
tar -xzf "$tmp/axe.tgz" -C "$tmp" package/axe.min.js package/LICENSE
mkdir -p "$DIR"
mv "$tmp/package/LICENSE" "$DIR/LICENSE"
# Last, so that a half-done run never leaves a file the fast path above would trust.
mv "$tmp/package/axe.min.js" "$JS"
echo "$JS"
