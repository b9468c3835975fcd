"""The `vsbench` application object, its process edge and the helpers every command uses."""

from __future__ import annotations

import functools
import logging
import sys

import typer
from typer.core import TyperGroup

from services.common.errors import VsbenchError


class _CommandGroup(TyperGroup):
    """The process edge of every command: a domain error (VsbenchError) ends in one line on
    stderr and exit status 2; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VsbenchError as exc:
            logging.getLogger(__name__).debug("command failed", exc_info=True)
            sys.stderr.write(f"error: {' '.join(str(exc).split())}\n")
            ctx.exit(2)


app = typer.Typer(
    cls=_CommandGroup,
    help="Benchmark image embedding models for instance-level product identification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
export_app = typer.Typer(help="Export models for production serving.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@functools.cache
def stderr_console():
    """rich's Console on stderr, made when a command first prints through it: importing rich is
    ~20 ms of every command's start, and the scoring commands print one plain line instead."""
    from rich.console import Console

    return Console(stderr=True)


def parse_ks(text: str, option: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise typer.BadParameter(f"{option} values must be >= 1, got {text!r}")
    return values


def check_engine(engine: str) -> str:
    if engine not in ("auto", "torch", "numpy"):
        raise typer.BadParameter(f"--engine takes auto, torch or numpy, got {engine!r}")
    return engine


def fail(message: str) -> None:
    # Plain stderr, one line: scripts and users grep it (rich would wrap long paths).
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code=2)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="log debug details")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def print_record(result) -> None:
    record = result.record
    if not result.ok:
        sys.stderr.write(f"error: {record.failure} (record: {result.path})\n")
        raise typer.Exit(code=1)
    metrics = ", ".join(f"{name} {value:.2f}" if value is not None else f"{name} n/a"
                        for name, value in record.metrics.items())
    q = record.queries
    # one plain line on stderr, never wrapped: scripts grep it
    sys.stderr.write(f"{metrics}  ({q.scored} queries scored, {q.unanswerable} unanswerable) -> {result.path}\n")


def skipped(message: str) -> None:
    sys.stderr.write(f"skipped: {message}\n")
