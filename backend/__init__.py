"""Attention Atlas backend: run specs, cache, jobs and analysis shared by the app and the worker.

Modules directly under ``backend`` import no torch; ``backend.engine`` holds the torch code and is
imported only by the worker (and by notebooks that run models in-process).
"""

ENGINE_VERSION = "4"
"""Bumped whenever captured tensors or metrics change meaning: it is part of every run id."""
