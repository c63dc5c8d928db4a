"""The engine's stage list, in run order: what each analysis adds to the capture pass and what runs after it.

:func:`backend.engine.analyze.analyze` runs one capture pass with :func:`capture_reducers` (the pattern store
is always there), emits each reducer's ``results()``, then calls every stage of :data:`STAGES` whose analysis
the run asked for. Adding an analysis: its module with a reducer factory and/or a stage function, one entry
here, its name in :mod:`backend.vocab` (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from backend.engine import embedding_stage, importance_stage, roles_stage, streaming, token_norms
from backend.engine.metrics_reducer import MassiveActivationReducer, SinkMetricsReducer
from backend.engine.models import LoadedModel
from backend.vocab import RAW_MAPS

ReducerFactory = Callable[[LoadedModel, dict[str, Any]], list]
StageFn = Callable[..., None]
"""``stage(loaded, inputs, options, reducers, emit, progress, should_cancel, info)``."""


def _analyses(options: dict[str, Any]) -> list[str]:
    return list(options.get("analyses") or [])


def sink_metric_reducers(loaded: LoadedModel, options: dict[str, Any]) -> list:
    """"metrics": sink metrics + massive activations. "roles" alone (text) still needs previous_token,
    sink_first and entropy on the run's prompts, so it gets the sink-metrics reducer."""
    analyses = _analyses(options)
    if "metrics" in analyses:
        return [SinkMetricsReducer(loaded.n_layers, loaded.n_heads, loaded.causal),
                MassiveActivationReducer(loaded.n_layers)]
    if "roles" in analyses and loaded.kind == "text":
        return [SinkMetricsReducer(loaded.n_layers, loaded.n_heads, loaded.causal)]
    return []


REDUCERS: tuple[ReducerFactory, ...] = (
    sink_metric_reducers,
    token_norms.reducers,  # image runs: high-norm tokens
    embedding_stage.reducers,  # "embedding": the query/key sampler
)
"""Factories of the capture pass's reducers (after the pattern store), each ``(loaded, options) -> [reducer]``."""


@dataclass(frozen=True)
class Stage:
    """A step after the capture pass, run when the run's analyses include ``analysis``."""

    analysis: str
    run: StageFn
    also: tuple[str, ...] = ()
    """Other analyses this stage computes (it runs when the run asks for any of them)."""

    def wanted(self, options: dict[str, Any]) -> bool:
        return any(a in _analyses(options) for a in (self.analysis, *self.also))


STAGES: tuple[Stage, ...] = (
    Stage("streaming", streaming.streaming_stage),
    Stage("roles", roles_stage.roles_stage),
    Stage("importance", importance_stage.importance_stage),
    Stage("embedding", embedding_stage.embedding_stage, also=(RAW_MAPS,)),
)


def capture_reducers(loaded: LoadedModel, options: dict[str, Any]) -> list:
    """The reducers the run's analyses add to the capture pass, in :data:`REDUCERS` order."""
    return [r for factory in REDUCERS for r in factory(loaded, options)]


def post_stages(options: dict[str, Any]) -> Sequence[Stage]:
    """The stages the run asked for, in :data:`STAGES` order."""
    return [s for s in STAGES if s.wanted(options)]
