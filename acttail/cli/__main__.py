"""``python -m acttail.cli``: the same entry point as the ``acttail`` script (used by tests and helpers)."""

from acttail.cli import main

main()
