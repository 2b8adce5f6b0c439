"""The `kafka-dagster` command line: dev, worker, produce, routes test, dlq, status.

Each command runs at most one event loop of its own (`running.run`); `worker` then
hands over to Faust's, which it creates itself. Only `dev` and `produce --demo`
import the development tooling (`service.dev`), and only when they run.
Exit codes: 0 done, 1 a runtime failure (one line on stderr, never a
traceback, for a broker or worker that cannot be reached), 2 a usage error.
docs/cli.md is the reference.
"""

from __future__ import annotations

import click

from service import __version__
from service.cli.commands import check, dev, routes, status, worker
from service.cli.dead_letters import dlq
from service.cli.sending import produce

EPILOG = """\b
Exit codes: 0 done; 1 a runtime failure (a broker or worker that cannot be
reached, a refused setting: one line on stderr); 2 a usage error.

\b
Shell completion (bash; zsh and fish alike with zsh_source, fish_source):
  eval "$(_KAFKA_DAGSTER_COMPLETE=bash_source kafka-dagster)"

Reference: docs/cli.md."""

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.version_option(__version__, "--version", prog_name="kafka-dagster", message="%(prog)s %(version)s")
def main() -> None:
    """Turn Kafka messages into Dagster runs."""


for command in (worker, produce, dev, check, routes, dlq, status):
    main.add_command(command)
