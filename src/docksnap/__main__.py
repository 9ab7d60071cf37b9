"""``python -m docksnap``: the same as the ``docksnap`` command."""

from docksnap.cli import main

main()
