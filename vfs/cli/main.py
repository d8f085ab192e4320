"""Entry point of the ``vfs`` command."""

from __future__ import annotations

import click

from vfs.cli.attachment import attachment
from vfs.cli.cache import cache
from vfs.cli.common import VfsGroup, escape_unencodable_output, setup_logging
from vfs.cli.manifest import manifest
from vfs.cli.mount import mount, unmount
from vfs.cli.stats import stats


@click.group(cls=VfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="vfs")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """AWS Deadline Cloud job attachments: a FUSE filesystem and the tools under it."""
    ctx.obj = {"verbose": verbose}
    setup_logging(verbose)


cli.add_command(manifest)
cli.add_command(attachment)
cli.add_command(mount)
cli.add_command(unmount)
cli.add_command(stats)
cli.add_command(cache)


def main() -> None:
    """Run the ``vfs`` command line (unencodable characters in output are escaped)."""
    escape_unencodable_output()
    cli(prog_name="vfs")
