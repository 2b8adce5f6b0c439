"""Log format: human-readable by default, JSON lines with KAFKA_DAGSTER_LOG_FORMAT=json.

Lines about a batch carry its fields (`topic`, `partition`, `offset_start`,
`offset_end`, `batch_id`, `run_id`; on a launch, `closed_s_ago`: seconds from
the batch closing to its LaunchRunSuccess) as `extra`, so JSON lines can be
filtered without parsing messages.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

BATCH_FIELDS = ("topic", "partition", "offset_start", "offset_end", "batch_id", "run_id", "stage", "closed_s_ago")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, batch fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in BATCH_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def logging_config(log_format: str, level: str) -> dict[str, Any] | None:
    """A dictConfig for Faust's worker; None keeps Faust's own text format."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "level": level}},
        "root": {"level": level, "handlers": ["default"]},
        "loggers": {"httpx": {"level": "WARNING"}},
    }


def batch_extra(batch: Any, run_id: str | None = None) -> dict[str, Any]:
    """The `extra` of a log line about `batch`."""
    return {"topic": batch.topic, "partition": batch.partition, "offset_start": batch.offset_start,
            "offset_end": batch.offset_end, "batch_id": batch.batch_id, "run_id": run_id}
