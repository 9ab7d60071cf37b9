"""The ``docksnap`` command line (click + rich); ``main`` is the console script."""

from docksnap.cli.main import cli, main

__all__ = ["cli", "main"]
