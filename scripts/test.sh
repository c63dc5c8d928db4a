#!/usr/bin/env bash
# The whole test suite in one command, from a fresh clone (this is what .ci/run calls):
#
#   bash scripts/test.sh [pytest args...]       # e.g. -m "not browser", tests/unit, -x
#
# 1. scripts/setup.sh: .venv with torch==2.13.0 (CPU) first, then this package with [test] extras.
# 2. Debian chromium + chromium-driver for the browser tests (Playwright drives /usr/bin/chromium; it never
#    downloads a browser of its own).
# 3. A Redis for the integration tests: unless REDIS_URL or ATLAS_TEST_REDIS_URL is given, one must answer at
#    127.0.0.1:6379; if none does, redis-server is started there (and installed from Debian if missing).
#    Tests use ATLAS_TEST_REDIS_URL (default redis://127.0.0.1:6379/13) with a unique key prefix per run.
# 4. pytest, with the options from pyproject.toml.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # repo root, whatever the caller's cwd

say() { printf 'test.sh: %s\n' "$*" >&2; }

is_root() { [[ "$(id -u)" == "0" ]]; }

apt_updated=0
apt_install() {
    if [[ "$apt_updated" == "0" ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- 1. Python environment ---------------------------------------------------------------------------------------
bash scripts/setup.sh

# --- 2. Chromium for the browser tests ---------------------------------------------------------------------------
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    if is_root && command -v apt-get >/dev/null; then
        say "installing Debian chromium and chromium-driver"
        apt_install chromium chromium-driver
    else
        say "WARNING: /usr/bin/chromium is missing and this is not root (or not Debian); the browser tests need it:"
        say "         sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium chromium-driver"
    fi
fi

# --- 3. Redis ----------------------------------------------------------------------------------------------------
redis_answers() {
    if command -v redis-cli >/dev/null; then
        [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == "PONG" ]]
    else
        .venv/bin/python -c '
import redis, sys
try:
    sys.exit(0 if redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping() else 1)
except Exception:
    sys.exit(1)' 2>/dev/null
    fi
}

if [[ -z "${REDIS_URL:-}" && -z "${ATLAS_TEST_REDIS_URL:-}" ]] && ! redis_answers; then
    if ! command -v redis-server >/dev/null; then
        if is_root && command -v apt-get >/dev/null; then
            say "installing Debian redis-server"
            apt_install redis-server
        else
            say "WARNING: no Redis at 127.0.0.1:6379 and no redis-server to start; the integration tests need one"
        fi
    fi
    # Installing the Debian package may have started its own service.
    if command -v redis-server >/dev/null && ! redis_answers; then
        if is_root; then
            redis_dir=/var/lib/redis redis_log=/var/log/redis/ci.log
        else
            redis_dir=/tmp redis_log=/tmp/atlas-redis-ci.log
        fi
        mkdir -p "$redis_dir" "$(dirname "$redis_log")"
        say "starting redis-server on 127.0.0.1:6379 (log: $redis_log)"
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir "$redis_dir" --logfile "$redis_log"
        for _ in $(seq 50); do
            redis_answers && break
            sleep 0.2
        done
        redis_answers || say "WARNING: redis-server did not answer on 127.0.0.1:6379 (see $redis_log)"
    fi
fi

# --- 4. pytest ---------------------------------------------------------------------------------------------------
export ATLAS_TEST_REDIS_URL="${ATLAS_TEST_REDIS_URL:-redis://127.0.0.1:6379/13}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

exec .venv/bin/python -m pytest "$@"
