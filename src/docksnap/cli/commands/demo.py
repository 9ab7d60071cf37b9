"""The README's main job, on this machine: ``docksnap demo``."""

from __future__ import annotations

import click

from docksnap.cli import render, shapes
from docksnap.cli.app import App, Result, output_options, pass_app
from docksnap.cli.demo import run_demo
from docksnap.cli.exits import ExitCode
from docksnap.cli.progress import Meter
from docksnap.service.client import Client


@click.command()
@click.option(
    "--size-mb",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="How much data the demo container writes.",
)
@click.option(
    "--image",
    default="docksnap-test:latest",
    show_default=True,
    help="A busybox-like image (sh, head, find, md5sum, sleep).",
)
@output_options
@pass_app
def demo(app: App, size_mb: int, image: str) -> None:
    """Show a directory surviving its container, with timings.

    Starts a container that writes SIZE_MB of files, snapshots the directory,
    destroys the container, restores into a fresh one and compares checksums.
    Everything it creates is removed at the end. Exits 12 if the files differ.

    \b
    Example:
      docksnap demo --size-mb 20
    """

    def say(line: str) -> None:
        if not app.quiet:
            click.echo(line, err=app.as_json)  # stdout belongs to the JSON document

    async def body(client: Client, meter: Meter) -> Result:
        report = await run_demo(client, image=image, size_mb=size_mb, say=say)
        size = report.snapshot.size
        rows = [
            [
                step,
                f"{secs:.2f} s",
                "" if step == "destroy" or secs <= 0 else f"{render.size(size / secs)}/s",
            ]
            for step, secs in report.timings.items()
        ]
        document = {
            "image": image,
            "size_mb": size_mb,
            "snapshot": shapes.record(report.snapshot),
            "files_match": report.files_match,
            "timings": report.timings,
        }
        lines = ["", *render.table(["STEP", "TIME", "RATE"], rows, frozenset({1, 2}))]
        code = ExitCode.OK if report.files_match else ExitCode.PROBLEMS_FOUND
        return Result(document, lines, exit_code=code)

    # The demo narrates each step itself; a progress display would interleave with it.
    app.run(body, progress=False)
