"""``docksnap serve``: the HTTP API and the web dashboard, over the same Client.

Layering: this package sits beside ``cli`` and may import the service layer
(and the CLI's exit-code table and JSON shapes, so both speak one language);
nothing below it imports it, and only it and ``cli`` import the ASGI stack.
"""

from __future__ import annotations

from docksnap.http.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
