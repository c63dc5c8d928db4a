#!/usr/bin/env bash
# Regenerate requirements.lock: a fresh virtual environment with torch and the package (+ test extras) resolved
# from pyproject.toml's ranges, then `pip freeze` of it (torch and the package itself left out: setup.sh installs
# torch first, on its own). Run the test suite with the new lock before committing it.
#
#   bash scripts/lock.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_VERSION="$(sed -n 's/^TORCH_VERSION="\(.*\)"$/\1/p' scripts/setup.sh)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
{
    echo "# Exact versions the test suite passed with (Python 3.11, CPU). scripts/setup.sh installs them with the package;"
    echo "# torch==$TORCH_VERSION is installed first, on its own (see setup.sh). pyproject.toml keeps the ranges for people who"
    echo "# install the package into their own environment. Regenerate after changing dependencies: bash scripts/lock.sh"
    "$tmp/venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^torch==\|^attention-atlas'
} > requirements.lock
echo "lock: wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)" >&2
