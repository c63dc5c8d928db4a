"""The one exception a cancelled run raises (between batches, heads or steps); the worker catches it."""

from __future__ import annotations


class Cancelled(RuntimeError):
    """The user cancelled the run; raised between batches or heads."""
