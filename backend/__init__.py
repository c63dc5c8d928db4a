"""Attention Atlas backend: run specs, cache, jobs and analysis shared by the app and the worker.

Modules directly under ``backend`` import no torch; ``backend.engine`` holds the torch code and is
imported only by the worker (and by notebooks that run models in-process).
"""

from backend.vocab import ENGINE_VERSION  # noqa: E402,F401  (declared with the vocabulary; bump it there)
