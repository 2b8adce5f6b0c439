"""`kafka-dagster dlq inspect|replay`: the dead letters listed, and sent back (service/replay.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import click
import orjson

from service.cli.options import SinceParam, dlq_options
from service.cli.running import kafka_security, run
from service.dlq import DeadLetter, Selection, describe, replayed_topic, schema_field, schema_ref
from service.kafka import check_security
from service.kafka.security import KafkaSecurity
from service.replay import ReplayPlan, dead_letters, plan_replay
from service.replay import replay as send_back


@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic."""


@dlq.command()
@dlq_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after N dead letters (those the filters select).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep reading new dead letters as they are written, until Ctrl-C.")
@click.option("--from-offset", type=click.IntRange(min=0), default=None, metavar="OFFSET",
              help="Start at this DLQ offset (in every partition of the DLQ topic).")
@click.option("--since", "since", type=SinceParam(), default=None,
              help="Only dead letters written (dlq.failed_at) at or after this time: ISO-8601 (UTC unless it "
                   "says) or a duration back from now (90s, 15m, 2h, 1d).")
def inspect(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
            as_json: bool, limit: int | None, follow: bool, from_offset: int | None, since: int | None) -> None:
    """List dead letters with their reasons: DLQ offset, origin, stage, error.

    Streams the topic: the first lines appear at once and memory stays flat
    however large it is. Duplicates (one origin and stage written twice) are
    shown once. The count goes to stderr at the end. --since reads from the
    start (or --from-offset), as a dead letter keeps its original timestamp.
    """
    security = kafka_security()
    shown = run(_inspect(bootstrap_servers, dlq_topic, Selection(stage, source_topic, since), from_offset, follow,
                         limit, as_json, security), interruptible=follow)
    click.echo(f"{shown} dead letters", err=True)


@dlq.command()
@dlq_options
@click.option("--to", "target_topic", default=None, help="Send to this topic instead of each record's origin.")
@click.option("--rate", type=click.FloatRange(min=0.0, min_open=True), default=100.0, show_default=True,
              help="Records per second at most (more than 0).")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; send nothing.")
@click.option("--yes", "-y", is_flag=True, help="Replay without asking for confirmation.")
@click.option("--force", is_flag=True,
              help="Also replay dead letters an earlier replay sent already (recorded in <dlq-topic>.replayed).")
def replay(bootstrap_servers: str, dlq_topic: str, stage: str | None, source_topic: str | None,
           target_topic: str | None, rate: float, dry_run: bool, yes: bool, force: bool) -> None:
    """Send dead letters back to their original topic (or --to), original key, value and headers.

    Each replayed record carries the header kafka-dagster.replay-of
    (<topic>/<partition>/<offset> of the original), and each replayed dead
    letter is recorded in the compacted topic <dlq-topic>.replayed: a later
    replay, from any machine, skips it unless --force.
    """
    security = kafka_security()
    plan = run(_plan_replay(bootstrap_servers, dlq_topic, Selection(stage, source_topic), security))
    letters = plan.letters if force else plan.fresh
    if plan.skipped and not force:
        click.echo(f"skipping {len(plan.skipped)} dead letters replayed before (--force replays them again)",
                   err=True)
    if dry_run:
        for letter in letters:
            click.echo(describe(letter))
        click.echo(f"would replay {len(letters)} dead letters", err=True)
        return
    if not letters:
        click.echo("nothing to replay", err=True)
        return
    targets = Counter(target_topic or letter.origin[0] for letter in letters)
    click.echo(f"{len(letters)} dead letters to replay: "
               + ", ".join(f"{count} to {topic}" for topic, count in sorted(targets.items())), err=True)
    if not yes:
        click.confirm("Replay them?", abort=True, err=True)
    sent = run(send_back(bootstrap_servers, replayed_topic(dlq_topic), letters, target_topic, rate, security))
    click.echo(f"replayed {sent} dead letters", err=True)


async def _inspect(bootstrap_servers: str, dlq_topic: str, selection: Selection, from_offset: int | None,
                   follow: bool, limit: int | None, as_json: bool, security: KafkaSecurity) -> int:
    """Print the selected dead letters as they stream in; how many were printed (Ctrl-C ends --follow)."""
    await check_security(bootstrap_servers, security)
    shown = 0
    try:
        async with contextlib.aclosing(dead_letters(bootstrap_servers, dlq_topic, selection, security,
                                                    from_offset, follow)) as letters:
            async for letter in letters:
                click.echo(_as_json(letter) if as_json else describe(letter))
                shown += 1
                if limit is not None and shown >= limit:
                    break
    except asyncio.CancelledError:
        if not follow:
            raise
    return shown


async def _plan_replay(bootstrap_servers: str, dlq_topic: str, selection: Selection,
                       security: KafkaSecurity) -> ReplayPlan:
    await check_security(bootstrap_servers, security)
    return await plan_replay(bootstrap_servers, dlq_topic, replayed_topic(dlq_topic), selection, security)


def _as_json(letter: DeadLetter) -> bytes:
    schema = schema_ref(letter)
    return orjson.dumps({"dlq_offset": letter.dlq_offset, **letter.dlq,
                         **({schema_field(letter): schema} if schema else {}),
                         "key": (letter.key or b"").decode("utf-8", "backslashreplace"),
                         "value": (letter.value or b"").decode("utf-8", "backslashreplace")})
