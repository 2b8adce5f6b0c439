"""Assets: the Kafka topics (observable sources), the batches, and the totals built from them.

    kafka/<topic> ─┬─> order_batches ──> order_totals
    (observed:     │   (materialized by    (materialized by aggregate_orders,
     end offsets)  │    process_orders)     launched by order_batches_sensor)
                   └─> refund_batches
                       (materialized by process_refunds)
"""

# No `from __future__ import annotations`: Dagster reads decorated signatures at runtime.
import hashlib
import json
import logging
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from dagster_project.checks import ORDER_BATCHES
from dagster_project.resources import KafkaResource
from dagster_project.routes_file import routes_file

logger = logging.getLogger(__name__)

ORDER_TOTALS = dg.AssetKey("order_totals")
REFUND_BATCHES = dg.AssetKey("refund_batches")
DEFAULT_TOPICS = ("demo.orders",)
RECENT_TOTALS = 50
PAGE = 1000


def source_topics(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The routed topics, read from the worker's routes file (`KAFKA_DAGSTER_ROUTES`, default routes.toml).

    Only the topic names are needed, to draw lineage from Kafka, so the file is
    read here rather than through the worker's route loader. A topic several
    routes share is listed once; a route with only a `topic_pattern` names no
    topic to model and is skipped (so the list may be empty). Without a
    readable routes file it models the demo topic.
    """
    path = routes_file(environ)
    try:
        routes = tomllib.loads(path.read_text()).get("routes", [])
    except (OSError, tomllib.TOMLDecodeError) as exc:
        logger.info("no routes file at %s (%s); modelling %s", path, exc, ", ".join(DEFAULT_TOPICS))
        return list(DEFAULT_TOPICS)
    routes = [route for route in routes if isinstance(route, dict)]
    patterns = [str(route["topic_pattern"]) for route in routes if "topic" not in route and "topic_pattern" in route]
    if patterns:
        logger.info("routes by topic_pattern (%s) are not modelled as kafka/<topic> assets: "
                    "their topics are known only to the worker", ", ".join(patterns))
    return list(dict.fromkeys(str(route["topic"]) for route in routes if "topic" in route))


def topic_key(topic: str) -> dg.AssetKey:
    return dg.AssetKey(["kafka", topic])


def topic_metadata(end_offsets: Mapping[int, int]) -> dict[str, dg.MetadataValue]:
    """What an observation of a topic reports: its partitions and their end offsets."""
    return {
        "partitions": dg.MetadataValue.int(len(end_offsets)),
        "end_offset_total": dg.MetadataValue.int(sum(end_offsets.values())),
        "end_offsets": dg.MetadataValue.json({str(p): o for p, o in sorted(end_offsets.items())}),
    }


def topic_version(end_offsets: Mapping[int, int]) -> dg.DataVersion:
    """A topic has new data exactly when an end offset moved."""
    canonical = json.dumps(sorted(end_offsets.items()))
    return dg.DataVersion(hashlib.sha256(canonical.encode()).hexdigest()[:16])


def build_kafka_topics(topics: Sequence[str]) -> dg.AssetsDefinition:
    """The routed Kafka topics as observable source assets; observing reads their end offsets."""

    @dg.multi_observable_source_asset(
        name="kafka_topics",
        specs=[
            dg.AssetSpec(topic_key(t), group_name="kafka", kinds={"kafka"},
                         description=f"The Kafka topic {t}; observations report its end offsets.")
            for t in topics
        ],
        description="Observes the end offsets of the routed Kafka topics.",
    )
    def kafka_topics(context: dg.AssetExecutionContext, kafka: KafkaResource) -> Iterator[dg.ObserveResult]:
        offsets = kafka.end_offsets(topics)
        for topic in topics:
            if topic not in offsets:
                context.log.warning("topic %s does not exist yet", topic)
                continue
            yield dg.ObserveResult(asset_key=topic_key(topic), metadata=topic_metadata(offsets[topic]),
                                   data_version=topic_version(offsets[topic]))

    return kafka_topics


def order_batches_spec(topics: Sequence[str]) -> dg.AssetSpec:
    """Batches are published by the `process_orders` op job, so the asset itself is only declared."""
    return dg.AssetSpec(
        ORDER_BATCHES,
        deps=[topic_key(t) for t in topics],
        group_name="orders",
        kinds={"kafka", "python"},
        description="One materialization per published micro-batch, from the process_orders job. "
                    "Metadata: Kafka coordinates, record counts, checks' facts, timings.",
    )


def refund_batches_spec(topics: Sequence[str]) -> dg.AssetSpec:
    """Refund batches are published by the `process_refunds` op job, so the asset itself is only declared."""
    return dg.AssetSpec(
        REFUND_BATCHES,
        deps=[topic_key(t) for t in topics],
        group_name="refunds",
        kinds={"kafka", "python"},
        description="One materialization per micro-batch of refunds, from the process_refunds job. "
                    "Metadata: Kafka coordinates, record counts, the amount refunded, timings.",
    )


def number(metadata: Mapping[str, dg.MetadataValue], key: str) -> float:
    """A numeric metadata value, 0 when absent (batches published before the key existed)."""
    value = metadata[key].value if key in metadata else None
    return float(value) if isinstance(value, int | float) else 0.0


class AggregationConfig(dg.Config):
    """Aggregate the batches published up to this event storage id (0: up to the latest)."""

    through_storage_id: int = 0


@dataclass(frozen=True)
class Totals:
    """Running totals over every published batch up to `through_storage_id`."""

    through_storage_id: int = 0
    batches: int = 0
    records: int = 0
    orders: int = 0
    amount: float = 0.0

    def add(self, storage_id: int, batch: Mapping[str, dg.MetadataValue]) -> "Totals":
        return Totals(
            through_storage_id=max(self.through_storage_id, storage_id),
            batches=self.batches + 1,
            records=self.records + int(number(batch, "record_count")),
            orders=self.orders + int(number(batch, "orders_processed")),
            amount=round(self.amount + number(batch, "amount_total"), 2),
        )

    def metadata(self) -> dict[str, dg.MetadataValue]:
        return {
            "through_storage_id": dg.MetadataValue.int(self.through_storage_id),
            "total_batches": dg.MetadataValue.int(self.batches),
            "total_records": dg.MetadataValue.int(self.records),
            "total_orders": dg.MetadataValue.int(self.orders),
            "total_amount": dg.MetadataValue.float(self.amount),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, dg.MetadataValue]) -> "Totals":
        return cls(int(number(metadata, "through_storage_id")), int(number(metadata, "total_batches")),
                   int(number(metadata, "total_records")), int(number(metadata, "total_orders")),
                   number(metadata, "total_amount"))


def previous_totals(instance: dg.DagsterInstance, through: int) -> Totals:
    """The recent totals that reach furthest without passing `through` (zero when there are none)."""
    records = instance.fetch_materializations(ORDER_TOTALS, limit=RECENT_TOTALS, ascending=False).records
    candidates = [
        Totals.from_metadata(r.asset_materialization.metadata)
        for r in records if r.asset_materialization is not None
    ]
    return max((t for t in candidates if t.through_storage_id <= through),
               key=lambda t: t.through_storage_id, default=Totals())


def published_batches(instance: dg.DagsterInstance, after: int,
                      through: int) -> Iterator[tuple[int, Mapping[str, dg.MetadataValue]]]:
    """(storage id, metadata) of each `order_batches` materialization in (after, through], oldest first."""
    records_filter = dg.AssetRecordsFilter(asset_key=ORDER_BATCHES, after_storage_id=after,
                                           before_storage_id=through + 1)
    cursor = None
    while True:
        page = instance.fetch_materializations(records_filter, limit=PAGE, cursor=cursor, ascending=True)
        for record in page.records:
            if record.asset_materialization is not None:
                yield record.storage_id, record.asset_materialization.metadata
        if not page.has_more:
            return
        cursor = page.cursor


@dg.asset(
    key=ORDER_TOTALS,
    deps=[ORDER_BATCHES],
    group_name="orders",
    kinds={"python"},
    description="Running totals of every published order batch. Each materialization is the total "
                "through the batch event it names, so runs may finish in any order.",
)
def order_totals(context: dg.AssetExecutionContext, config: AggregationConfig) -> dg.MaterializeResult:
    instance = context.instance
    through = config.through_storage_id
    if through <= 0:
        latest = instance.fetch_materializations(ORDER_BATCHES, limit=1, ascending=False).records
        through = latest[0].storage_id if latest else 0
    previous = totals = previous_totals(instance, through)
    for storage_id, batch in published_batches(instance, previous.through_storage_id, through):
        totals = totals.add(storage_id, batch)
    totals = Totals(through, totals.batches, totals.records, totals.orders, totals.amount)
    context.log.info("order totals through event %d: %d batches added, %d in all",
                     through, totals.batches - previous.batches, totals.batches)
    return dg.MaterializeResult(metadata={
        **totals.metadata(),
        "batches_added": dg.MetadataValue.int(totals.batches - previous.batches),
        "records_added": dg.MetadataValue.int(totals.records - previous.records),
        "amount_added": dg.MetadataValue.float(round(totals.amount - previous.amount, 2)),
    })
