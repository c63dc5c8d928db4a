"""The queue worker: the only long-lived process that runs models."""
