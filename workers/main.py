"""Worker entry point: connect, warm up (numba, default model), then serve the queue in-process.

Uses RQ's ``SimpleWorker``: jobs run in this process, so models stay resident and nothing forks
after CUDA is initialised. Several workers on several machines can serve one queue.
"""

from __future__ import annotations

import logging
import os
import socket

from rq import SimpleWorker
from rq.serializers import JSONSerializer

from backend.jobs import queue_for
from backend.model_refs import DEFAULT_MODEL, ModelError, resolve_model
from backend.redis_conn import connect
from backend.settings import get_settings

log = logging.getLogger("atlas.worker")


def warm_up(preload: str | None = DEFAULT_MODEL) -> None:
    """Pay one-off costs before the first job: torch import, UMAP's numba compile, default model."""
    settings = get_settings()
    from backend.engine import capture  # noqa: F401  (registers the attention function)
    from workers.tasks import registry

    try:
        from backend import projections

        projections.warm_up()
    except (ImportError, AttributeError):
        pass
    if preload:
        try:
            registry(settings).get(resolve_model(preload, settings), settings.dtype)
        except ModelError as exc:
            log.warning("could not preload %s: %s", preload, exc)


def main(burst: bool = False, preload: str | None = DEFAULT_MODEL) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    settings = get_settings()
    conn = connect(settings)
    warm_up(preload if os.environ.get("ATLAS_PRELOAD", "1") != "0" else None)
    name = f"atlas-{socket.gethostname()}-{os.getpid()}"
    worker = SimpleWorker([queue_for(conn, settings)], connection=conn, serializer=JSONSerializer, name=name)
    worker.work(burst=burst, with_scheduler=False, logging_level="INFO")


if __name__ == "__main__":
    main()
