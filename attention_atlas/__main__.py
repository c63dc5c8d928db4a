"""``python -m attention_atlas`` = the ``attention-atlas`` command."""

from attention_atlas.cli import main

raise SystemExit(main())
