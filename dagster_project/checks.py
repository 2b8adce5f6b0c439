"""Data-quality checks on `order_batches`: completeness, schema conformance, duplicate keys.

The checks are declared once (`AssetCheckSpec`s) and evaluated in two places:

- inside every `process_orders` run, by the `publish_batch` op, which yields an
  `AssetCheckEvaluation` per check before it publishes the batch. The
  `completeness` check is blocking with ERROR severity: when it fails the step
  fails, the batch is not materialized, and nothing downstream (the
  aggregation the sensor launches) ever sees it.
- on demand, from the UI, by `order_batch_checks`, which re-evaluates the
  latest materialization from the metadata the run recorded.
"""

# No `from __future__ import annotations`: Dagster reads decorated signatures at runtime.
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

ORDER_BATCHES = dg.AssetKey("order_batches")
MAX_SAMPLES = 10

COMPLETENESS = dg.AssetCheckSpec(
    "completeness", asset=ORDER_BATCHES, blocking=True,
    description="Processable records / records in the offset range is at least the threshold. "
                "Blocking: a batch below it is not published.",
)
SCHEMA_CONFORMANCE = dg.AssetCheckSpec(
    "schema_conformance", asset=ORDER_BATCHES,
    description="Every record is an order as schemas/order.json describes it (WARN).",
)
DUPLICATE_KEYS = dg.AssetCheckSpec(
    "duplicate_keys", asset=ORDER_BATCHES,
    description="No order_id appears twice in a batch (WARN).",
)
SPECS = (COMPLETENESS, SCHEMA_CONFORMANCE, DUPLICATE_KEYS)


@dataclass(frozen=True)
class Audit:
    """The facts about one batch the checks judge; also recorded as materialization metadata."""

    expected: int
    received: int
    processable: int
    threshold: float
    nonconforming_count: int = 0
    duplicate_count: int = 0
    nonconforming_samples: tuple[str, ...] = ()
    duplicate_samples: Mapping[str, int] = field(default_factory=dict)

    @property
    def completeness(self) -> float:
        return round(self.processable / self.expected, 4) if self.expected else 1.0

    def metadata(self) -> dict[str, dg.MetadataValue]:
        return {
            "completeness": dg.MetadataValue.float(self.completeness),
            "completeness_threshold": dg.MetadataValue.float(self.threshold),
            "records_expected": dg.MetadataValue.int(self.expected),
            "records_received": dg.MetadataValue.int(self.received),
            "orders_processed": dg.MetadataValue.int(self.processable),
            "nonconforming_count": dg.MetadataValue.int(self.nonconforming_count),
            "duplicate_count": dg.MetadataValue.int(self.duplicate_count),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, dg.MetadataValue]) -> "Audit":
        def value(key: str, default: Any = 0) -> Any:
            entry = metadata.get(key)
            return entry.value if entry is not None else default

        return cls(
            expected=int(value("records_expected")),
            received=int(value("records_received")),
            processable=int(value("orders_processed")),
            threshold=float(value("completeness_threshold", 0.0)),
            nonconforming_count=int(value("nonconforming_count")),
            duplicate_count=int(value("duplicate_count")),
        )


@dataclass(frozen=True)
class Outcome:
    """One check's verdict, convertible to the in-run event or the standalone check's result."""

    spec: dg.AssetCheckSpec
    passed: bool
    severity: dg.AssetCheckSeverity
    description: str
    metadata: Mapping[str, Any]

    @property
    def blocks_publishing(self) -> bool:
        """A failed blocking check: the batch must not be materialized."""
        return self.spec.blocking and not self.passed

    def evaluation(self) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=self.spec.asset_key, check_name=self.spec.name, passed=self.passed,
            metadata=dict(self.metadata), severity=self.severity, description=self.description,
            blocking=self.spec.blocking,
        )

    def result(self) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            asset_key=self.spec.asset_key, check_name=self.spec.name, passed=self.passed,
            metadata=dict(self.metadata), severity=self.severity, description=self.description,
        )


def completeness(audit: Audit) -> Outcome:
    passed = audit.completeness >= audit.threshold
    return Outcome(
        COMPLETENESS, passed, dg.AssetCheckSeverity.ERROR,
        f"{audit.processable} of {audit.expected} records processable "
        f"({audit.completeness:.0%}, threshold {audit.threshold:.0%})",
        {
            "completeness": dg.MetadataValue.float(audit.completeness),
            "threshold": dg.MetadataValue.float(audit.threshold),
            "records_expected": dg.MetadataValue.int(audit.expected),
            "records_received": dg.MetadataValue.int(audit.received),
            "orders_processed": dg.MetadataValue.int(audit.processable),
        },
    )


def schema_conformance(audit: Audit) -> Outcome:
    count = audit.nonconforming_count
    return Outcome(
        SCHEMA_CONFORMANCE, count == 0, dg.AssetCheckSeverity.WARN,
        f"{count} of {audit.received} records do not conform to the order schema",
        {
            "nonconforming_count": dg.MetadataValue.int(count),
            "records_received": dg.MetadataValue.int(audit.received),
            "samples": dg.MetadataValue.json(list(audit.nonconforming_samples[:MAX_SAMPLES])),
        },
    )


def duplicate_keys(audit: Audit) -> Outcome:
    extra = audit.duplicate_count
    samples = dict(list(audit.duplicate_samples.items())[:MAX_SAMPLES])
    return Outcome(
        DUPLICATE_KEYS, extra == 0, dg.AssetCheckSeverity.WARN,
        f"{extra} records repeat an order_id already in the batch",
        {
            "duplicate_count": dg.MetadataValue.int(extra),
            "duplicated_order_ids": dg.MetadataValue.json(samples),
        },
    )


def outcomes(audit: Audit) -> list[Outcome]:
    return [completeness(audit), schema_conformance(audit), duplicate_keys(audit)]


@dg.multi_asset_check(specs=list(SPECS), name="order_batch_checks",
                      description="Re-evaluates the checks against the latest published batch.")
def order_batch_checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
    event = context.instance.get_latest_materialization_event(ORDER_BATCHES)
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        for spec in SPECS:
            yield dg.AssetCheckResult(asset_key=ORDER_BATCHES, check_name=spec.name, passed=False,
                                      severity=dg.AssetCheckSeverity.WARN,
                                      description="order_batches has not been materialized yet")
        return
    for outcome in outcomes(Audit.from_metadata(materialization.metadata)):
        yield outcome.result()
