# syntax=docker/dockerfile:1
# Attention Atlas image: the web app and the worker (see docker-compose.yml for the three services).
#
#   docker build -t attention-atlas .
#   docker run --rm -p 8050:8050 attention-atlas      # all-in-one: private Redis + worker + web app
#
# torch comes first and pinned (torch==2.13.0, as in pyproject.toml), so that installing the package afterwards finds
# it satisfied and pulls no other build. By default it is the CPU build. On a GPU host install a CUDA build of torch
# instead by pointing TORCH_INDEX_URL at a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t attention-atlas .
# (PyPI's own Linux x86_64 torch wheel is a CUDA build too: --build-arg TORCH_INDEX_URL=https://pypi.org/simple).
# plotly.js with only the trace types the app draws (scripts/build_plotly.sh); the app falls back to the full one
FROM node:22-slim AS plotly
WORKDIR /build
COPY scripts/build_plotly.sh ./scripts/
COPY scripts/plotly_bundle/package.json scripts/plotly_bundle/package-lock.json scripts/plotly_bundle/entry.js scripts/plotly_bundle/build.js ./scripts/plotly_bundle/
RUN bash scripts/build_plotly.sh

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple "torch==2.13.0"

WORKDIR /app
# Only what the package needs (no .venv, .git or caches from the build context). README* and asset[s] are globs so
# the build also works while they are absent; assets/models holds the bundled demo models.
COPY pyproject.toml README* ./
COPY app ./app
COPY attention_atlas ./attention_atlas
COPY backend ./backend
COPY workers ./workers
COPY docs ./docs
COPY asset[s] ./assets/
COPY --from=plotly /build/assets/vendor ./assets/vendor/
# Editable, so that settings.REPO_ROOT is /app and /app/assets/models is a model root.
RUN pip install -e .

EXPOSE 8050
CMD ["attention-atlas", "serve", "--host", "0.0.0.0"]
