"""The ``attention-atlas`` command (:mod:`attention_atlas.cli`): it sits above the packages it starts
(``app``, the web process; ``workers``, the RQ workers; ``backend``, shared by both), so none of them imports it."""
