"""``docksnap serve``: the command that starts the HTTP API and the dashboard.

Registered lazily by :mod:`docksnap.cli.main`, so other commands never import the
ASGI stack.
"""

from __future__ import annotations

from pathlib import Path

import click

from docksnap.cli.app import App, pass_app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8077, show_default=True, type=click.IntRange(0, 65535))
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback address without TLS (e.g. behind a TLS proxy).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the API token is kept (created 0600 on first start) unless "
    "DOCKSNAP_API_TOKEN is set. [default: $XDG_CONFIG_HOME/docksnap/api-token]",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the server keeps its history of store totals. [default: $XDG_STATE_HOME/docksnap]",
)
@pass_app
def serve(
    app: App,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
    token_file: Path | None,
    state_dir: Path | None,
) -> None:
    """Serve the HTTP API (/v1) and the web dashboard (/).

    Every request needs the API token (`Authorization: Bearer TOKEN`; the
    dashboard has a login form). Listens on loopback unless --host says
    otherwise, which needs --tls-cert/--tls-key or --insecure. The API is
    described at /v1/openapi.json.

    \b
    Example:
      docksnap serve --port 8077
      curl -H "Authorization: Bearer $DOCKSNAP_API_TOKEN" localhost:8077/v1/snapshots
    """
    from docksnap.http import ServeConfig
    from docksnap.http.auth import default_token_file, load_token
    from docksnap.http.history import default_state_dir
    from docksnap.http.server import Listen, check_listen, serve

    listen = Listen(host, port, tls_cert, tls_key, insecure)
    check_listen(listen)
    source = load_token(token_file or default_token_file())
    if source.created:
        # Printed once, when made; later starts read it from the file.
        click.echo(f"created API token in {source.origin} (mode 0600):", err=True)
        click.echo(source.token)
    else:
        click.echo(f"API token from {source.origin}", err=True)
    scheme = "https" if listen.tls else "http"
    click.echo(f"dashboard: {scheme}://{host}:{port}/  API: {scheme}://{host}:{port}/v1", err=True)
    config = ServeConfig(
        token=source.token,
        state_dir=state_dir or default_state_dir(),
        docker_host=app.docker_host,
        store=app.store,
        labels=app.labels,
    )
    serve(config, listen)
