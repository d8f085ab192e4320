"""Pieces shared by the command groups: error reporting, S3 options, output."""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from vfs.errors import VfsError
from vfs.storage import S3Options

F = TypeVar("F", bound=Callable[..., Any])
P = TypeVar("P")


class Interrupt:
    """Ctrl-C seen by :func:`ctrl_c_cancels`: ``hit`` turns true at the first SIGINT."""

    def __init__(self) -> None:
        self.hit = False

    def guard(self, callback: Callable[[P], bool] | None = None) -> Callable[[P], bool]:
        """A progress callback that cancels (returns ``False``) once Ctrl-C was hit and
        otherwise answers like ``callback`` (``True`` without one)."""

        def report(progress: P) -> bool:
            if self.hit:
                return False
            return True if callback is None else callback(progress)

        return report


@contextlib.contextmanager
def ctrl_c_cancels() -> Iterator[Interrupt]:
    """Turn the first Ctrl-C into a request to cancel, polled by a transfer's progress
    callback (:meth:`Interrupt.guard`), instead of a ``KeyboardInterrupt`` raised wherever
    the main thread happens to be: raised before a transfer's own ``try`` it leaves stalled
    reads uncut (one of 25 interrupts in a stress waited out an 8 s stall), and raised
    inside ``concurrent.futures.wait`` or between a lock's acquire and its ``try`` it can
    leave a lock held that the worker threads then wait for. The transfer stops at
    its next report (0.1 s), removes its temporary files, and ``KeyboardInterrupt`` is
    raised here once it returned (click prints "Aborted!", exit status 1). A second
    Ctrl-C raises at once. Outside the main thread, or when SIGINT is ignored (a command
    started with ``nohup`` or in the background of a script), this does nothing."""
    flag = Interrupt()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        yield flag
        return

    def on_sigint(signum: int, frame: object) -> None:
        if flag.hit:
            raise KeyboardInterrupt
        flag.hit = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
    if flag.hit:
        raise KeyboardInterrupt


class VfsGroup(click.Group):
    """A click group that turns :class:`VfsError` into a one-line message and exit code 1,
    and gives each of its commands ``-v`` (so ``vfs mount -v …`` works like ``vfs -v mount
    …``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VfsError as e:
            raise click.ClickException(str(e)) from None

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not isinstance(command, click.Group):
            add_verbose_option(command)
        return command


def _more_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """``-v`` given after the command: add to the group's count and set logging up again."""
    if not value:
        return
    root = ctx.find_root()
    if root.obj is None:
        root.obj = {}
    root.obj["verbose"] = root.obj.get("verbose", 0) + value
    setup_logging(root.obj["verbose"])


def add_verbose_option(command: click.Command) -> None:
    """Give ``command`` a ``-v/--verbose`` counting option (once)."""
    if any(p.name == "verbose_after" for p in command.params):
        return
    command.params.append(
        click.Option(
            ["-v", "--verbose", "verbose_after"],
            count=True,
            expose_value=False,
            is_eager=True,
            callback=_more_verbose,
            help="More log output (-v info, -vv debug).",
        )
    )


def _set_env(name: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ[name] = value  # read by boto3 here and in a spawned mount daemon

    return callback


def s3_options(func: F) -> F:
    """Add ``--endpoint-url``, ``--expected-bucket-owner``, ``--profile`` and ``--region``
    to a command (the last two set ``AWS_PROFILE`` and ``AWS_DEFAULT_REGION``, which boto3
    reads, also in a mount daemon started from the command)."""
    func = click.option(
        "--region", metavar="REGION", expose_value=False, callback=_set_env("AWS_DEFAULT_REGION"),
        help="AWS region of the bucket (default: the profile's or AWS_DEFAULT_REGION).",
    )(func)  # fmt: skip
    func = click.option(
        "--profile", metavar="NAME", expose_value=False, callback=_set_env("AWS_PROFILE"),
        help="AWS profile of the credentials (default: AWS_PROFILE or boto3's chain).",
    )(func)  # fmt: skip
    func = click.option(
        "--expected-bucket-owner",
        envvar="VFS_EXPECTED_BUCKET_OWNER",
        metavar="ACCOUNT_ID",
        help="AWS account id that must own the bucket; sent on every S3 call.",
    )(func)
    func = click.option(
        "--endpoint-url",
        envvar="AWS_ENDPOINT_URL",
        metavar="URL",
        help="S3 endpoint (for S3-compatible servers). Default: AWS_ENDPOINT_URL or AWS.",
    )(func)
    return func


def make_s3_options(endpoint_url: str | None, expected_bucket_owner: str | None) -> S3Options:
    """The :class:`S3Options` the two common flags describe."""
    return S3Options(endpoint_url=endpoint_url or None, expected_bucket_owner=expected_bucket_owner)


def emit_json(value: Any) -> None:
    """Print ``value`` as one line of JSON on stdout."""
    sys.stdout.write(json.dumps(value) + "\n")


def escape_unencodable_output() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` write what they cannot encode as backslash
    escapes (``\\ud800``, ``\\udcff``) instead of raising :class:`UnicodeEncodeError`.

    Paths in manifests and on disk may hold lone surrogates (JSON ``"\\ud800"``, or bytes
    that are not UTF-8, decoded with ``surrogateescape``) that no stream can encode; every
    command prints such paths escaped rather than dying with a traceback. An ASCII stream
    (``LC_ALL=C`` without UTF-8 mode) is switched to UTF-8 first, as click would do anyway
    (its ``echo`` rewraps ASCII streams as UTF-8 with ``errors="replace"``, which turns the
    characters into ``?``). Streams that cannot be reconfigured (replaced by a test runner,
    closed, ``None``) are left alone.
    """
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper) or stream.closed:
            continue
        ascii_only = codecs.lookup(stream.encoding).name == "ascii"
        stream.reconfigure(encoding="utf-8" if ascii_only else None, errors="backslashreplace")


def setup_logging(verbose: int, log_file: str | None = None) -> None:
    """Log to stderr (or ``log_file``): warnings by default, info with -v, debug with -vv,
    errors only when ``verbose`` is negative (``--log-level error``).

    Log records with characters the file cannot hold (lone surrogates in paths) are written
    with backslash escapes.
    """
    level = (
        logging.ERROR if verbose < 0
        else logging.WARNING if verbose == 0
        else logging.INFO if verbose == 1
        else logging.DEBUG
    )  # fmt: skip
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
        if log_file
        else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional binary unit (``512M``, ``20G``, ``1.5T``).

    Raises ``click.BadParameter`` for anything else.
    """
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in _UNITS else ""
    try:
        value = float(s[: len(s) - len(unit)] if unit else s)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size (examples: 512M, 20G)") from None
    if value < 0:
        raise click.BadParameter(f"{text!r} is negative")
    return int(value * _UNITS[unit])


def size_callback(ctx: click.Context, param: click.Parameter, value: str | int) -> int:
    """Click callback turning a size option (``20G``) into bytes."""
    return value if isinstance(value, int) else parse_size(value)


@dataclass(frozen=True, slots=True)
class ByteBar:
    """A progress bar of bytes: ``advance(n)`` with each number of bytes done,
    ``set_total(n)`` when the total becomes known (or changes)."""

    advance: Callable[[int], None]
    set_total: Callable[[int], None]


@contextlib.contextmanager
def byte_bar(
    description: str, total: int | None, enabled: bool, total_later: bool = False
) -> Iterator[ByteBar | None]:
    """A progress bar of bytes on stderr, shown only when ``enabled`` and stderr is a
    terminal; yields it, or ``None``. With a ``total`` (or ``total_later``: one given with
    :attr:`ByteBar.set_total`) the bar shows the time remaining."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    # Imported here: rich costs every command ~0.05 s and is needed only for a bar.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [BarColumn(), DownloadColumn(), TransferSpeedColumn()]
    if total is not None or total_later:
        columns.append(TimeRemainingColumn())
    console = Console(stderr=True)  # stdout may be a pipe (--json, redirected summaries)
    with Progress(
        "[progress.description]{task.description}", *columns, transient=True, console=console
    ) as bar:
        task = bar.add_task(description, total=total)
        yield ByteBar(lambda n: bar.advance(task, n), lambda n: bar.update(task, total=n))


@contextlib.contextmanager
def byte_progress(
    description: str, total: int | None, enabled: bool
) -> Iterator[Callable[[int], None] | None]:
    """A progress bar of bytes on stderr, shown only when ``enabled`` and stderr is a
    terminal; yields the function to call with each number of bytes done, or ``None``
    (:func:`byte_bar` with a total known from the start, or none)."""
    with byte_bar(description, total, enabled) as bar:
        yield None if bar is None else bar.advance
