#!/usr/bin/env bash
# Build assets/vendor/plotly-atlas.min.js: plotly.js with only the trace types the app draws
# (scripts/plotly_bundle/entry.js). Dash's graphs use it instead of the full plotly.js, which is 3x larger and costs
# about a second of every page load to evaluate on a small machine (benchmarks/bench_browser.py).
#
#   bash scripts/build_plotly.sh        # from any directory; needs node and npm (the npm registry, once)
#
# Idempotent: skipped while the bundle's stamp matches package.json, package-lock.json, entry.js and build.js.
# Without the bundle the app still works: Dash then loads its own full plotly.js.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # repo root
SRC="scripts/plotly_bundle"
OUT_DIR="assets/vendor"
OUT="$OUT_DIR/plotly-atlas.min.js"
STAMP="$OUT_DIR/.plotly-atlas.stamp"

say() { printf 'build_plotly: %s\n' "$*" >&2; }

want="$(cat "$SRC/package.json" "$SRC/package-lock.json" "$SRC/entry.js" "$SRC/build.js" | sha256sum | cut -d' ' -f1)"
if [[ -s "$OUT" && "$(cat "$STAMP" 2>/dev/null || true)" == "$want" ]]; then
    exit 0
fi
for tool in node npm; do
    command -v "$tool" >/dev/null || { say "$tool not found: the app will load Dash's full plotly.js"; exit 1; }
done

say "building $OUT (npm ci in $SRC, then esbuild)"
# --ignore-scripts: no package's install script runs (esbuild's binary comes as an optional dependency)
npm ci --prefix "$SRC" --no-audit --no-fund --ignore-scripts --loglevel=error >&2
mkdir -p "$OUT_DIR"
tmp="$(mktemp "$OUT_DIR/.plotly-atlas.XXXXXX.js")"
trap 'rm -f "$tmp"' EXIT
node "$SRC/build.js" "$tmp"
if [[ "$(stat -c %s "$tmp")" -lt 500000 ]]; then   # a broken build must not replace a good bundle
    say "the bundle is too small; not installed"
    exit 1
fi
chmod 644 "$tmp"
mv "$tmp" "$OUT"
trap - EXIT
printf '%s\n' "$want" >"$STAMP"
say "done: $(du -h "$OUT" | cut -f1)"
