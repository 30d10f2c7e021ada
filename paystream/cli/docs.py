"""`paystream docs`: the interface documents written from the code."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    pass
from paystream.cli.base import cli


@cli.command()
@click.option("--check", is_flag=True, help="only compare: exit 1 if a document differs")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="where they are [default: docs, from the repository root]",
)
def docs(check: bool, directory: Path | None) -> None:
    """Write the interface documents (AsyncAPI, OpenAPI) generated from the code."""
    from paystream import docs as interface

    given = directory is not None
    if directory is None:
        directory = Path("docs")
        # Run elsewhere, it wrote a docs/ of its own into whatever directory the shell
        # was in (review finding): only the repository's is written unasked.
        if not check and not directory.is_dir():
            raise click.ClickException(
                "no docs/ here: run from the repository root, or give --dir to write them elsewhere"
            )
    if not check:
        for path in interface.write(directory):
            click.echo(f"wrote {path}")
    elif differ := interface.stale(directory):
        missing = [n for n in differ if not (directory / n).is_file()]
        if missing:  # (run outside the repository root, or never written)
            names = ", ".join(str(directory / n) for n in missing)
            # (Told to run `paystream docs` outside the root, a new user was refused.)
            write = f"`paystream docs --dir {shlex.quote(str(directory))}`" if given else None
            raise click.ClickException(
                f"{names} not found: run {write} to write them"
                if write
                else f"{names} not found: run this from the repository root, or give "
                "--dir (`paystream docs` writes them there)"
            )
        names = ", ".join(str(directory / n) for n in differ)
        raise click.ClickException(f"{names} differ from the code: run `paystream docs`")
    else:
        click.echo(f"{directory}: the interface documents match the code")
