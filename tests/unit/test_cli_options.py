"""The command line's option checks and pacing, without a broker (tests/test_cli.py runs it for real)."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner

from service.cli import _chunks, main, paced


@pytest.mark.parametrize("args", [["dlq", "replay", "--rate", "0"], ["dlq", "replay", "--rate", "-5"],
                                  ["produce", "--topic", "t", "--rate", "-1"]])
def test_a_rate_that_cannot_pace_is_a_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 2
    assert "--rate" in result.output


async def test_paced_items_keep_their_order_and_rate() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    items = [item async for item in paced(range(5), rate=100.0)]

    assert items == [0, 1, 2, 3, 4]
    assert loop.time() - started >= 0.04  # the 5th item 4 / 100 s after the first


def test_unpaced_values_go_out_in_chunks() -> None:
    chunks = list(_chunks((bytes([n]) for n in range(5)), 2))

    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert chunks[0] == [(None, b"\x00"), (None, b"\x01")]
