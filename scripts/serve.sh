#!/usr/bin/env bash
# Set up (if needed) and start Attention Atlas: the web app, plus a private Redis and a worker when REDIS_URL is
# unset. Arguments go to `attention-atlas serve` (e.g. --host 0.0.0.0 --port 8050).
#
#   bash scripts/serve.sh [--host H] [--port P] [--no-worker]
#
# HF_HUB_OFFLINE defaults to 1 (local models only); run with HF_HUB_OFFLINE=0 to let transformers use the Hub.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # repo root, whatever the caller's cwd

bash scripts/setup.sh

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec .venv/bin/attention-atlas serve "$@"
