"""Entry point of the ``vfs`` command."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click

from vfs.cli.common import (
    VfsGroup,
    add_verbose_option,
    escape_unencodable_output,
    setup_logging,
)

LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "attachment": ("vfs.cli.attachment:attachment", "Upload and download job attachment data."),
    "cache": (
        "vfs.cli.cache:cache",
        "Inspect, prune and warm the block cache shared by the node's mounts.",
    ),
    "commit": (
        "vfs.cli.commit:commit",
        "Upload what a writable mount created or changed and write its output manifest.",
    ),
    "doctor": (
        "vfs.cli.doctor:doctor",
        "Check this node can mount; say what to fix.",
    ),
    "install-deadline-vfs": (
        "vfs.cli.install:install_deadline_vfs",
        "Install vfs as the worker agent's deadline_vfs.",
    ),
    "manifest": (
        "vfs.cli.manifest:manifest",
        "Create, compare, merge, inspect and move manifests.",
    ),
    "mount": (
        "vfs.cli.mount:mount",
        "Mount the merged MANIFESTs at MOUNTPOINT, read-only unless --writable.",
    ),
    "stats": (
        "vfs.cli.stats:stats",
        "Show a mount's counters: requests by kind, cache hits and misses, bytes fetched and "
        "served, retries and I/O errors.",
    ),
    "unmount": ("vfs.cli.mount:unmount", "Unmount a vfs mount; returns once it is gone."),
}
"""Every command, imported only when it runs (or its help is asked for): ``vfs mount``
answers sooner without the other groups' imports, and no command but mount and unmount
imports the FUSE stack (pyfuse3, trio). name -> (``module:attr``, the short help ``vfs
--help`` shows without importing them)."""


class LazyGroup(VfsGroup):
    """A :class:`VfsGroup` whose ``lazy_commands`` are imported only when one of them runs
    or its own help is asked for (click's "lazy loading subcommands" pattern).

    ``lazy_commands`` maps a name to ``("package.module:attribute", short help)``; the group's
    ``--help`` lists them with that short help, so listing commands imports nothing.
    """

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Eager and lazy command names, sorted."""
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command ``cmd_name``, importing its module first when it is a lazy one."""
        if cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}:{attribute} is not a click command")
        if not isinstance(command, click.Group):
            add_verbose_option(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The "Commands" section of the help; lazy commands show their stored short help."""
        eager = {n: c for n, c in self.commands.items() if n not in self.lazy_commands}
        limit = formatter.width - 6 - max(map(len, [*eager, *self.lazy_commands]), default=0)
        rows = [(n, c.get_short_help_str(limit)) for n, c in eager.items() if not c.hidden]
        rows += [
            (n, click.Command(n, help=short).get_short_help_str(limit))
            for n, (_, short) in self.lazy_commands.items()
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


@click.group(
    cls=LazyGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="vfs")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """AWS Deadline Cloud job attachments: a FUSE filesystem and the tools under it."""
    ctx.obj = {"verbose": verbose}
    setup_logging(verbose)


def main() -> None:
    """Run the ``vfs`` command line (unencodable characters in output are escaped)."""
    escape_unencodable_output()
    cli(prog_name="vfs")
