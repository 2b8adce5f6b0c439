"""Unit tests of the code location: every event pattern, asserted on the events it emits.

Kafka is faked at its resource boundary (`FakeKafka`); everything else is real
Dagster: `execute_in_process`, `materialize_to_memory`, `build_op_context`,
`build_sensor_context`, `build_run_status_sensor_context`, a test instance.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

import dagster as dg
import pytest

from dagster_project import checks, orders
from dagster_project.assets import (
    ORDER_TOTALS,
    REFUND_BATCHES,
    Totals,
    build_kafka_topics,
    order_totals,
    source_topics,
    topic_key,
)
from dagster_project.checks import ORDER_BATCHES, Audit, order_batch_checks
from dagster_project.dead_letters import dead_letter, dlq_headers
from dagster_project.definitions import build_definitions, defs
from dagster_project.jobs import process_orders_job, process_refunds_job
from dagster_project.ops import KafkaBatch, SplitConfig, read_batch, split_by_key
from dagster_project.resources import (
    DEFAULT_DLQ_TOPIC,
    DEFAULT_NOTIFICATIONS_TOPIC,
    DeadLetterResource,
    KafkaMessage,
    KafkaResource,
    KafkaUnavailable,
    MetricsResource,
    NotificationsResource,
    env_or,
)
from dagster_project.selection import selected
from dagster_project.sensors import build_kafka_topic_observer, notify_run_failure, order_batches_sensor
from service.dev.demo import ORDER_CREATED, REFUND_ISSUED
from service.matching import compile_match
from tests.support import ROOT


class FakeKafka(KafkaResource):
    """Kafka at the resource boundary: records to read back, what was published, scripted outages."""

    bootstrap_servers: str = "fake:9092"
    topics: ClassVar[dict[tuple[str, int], list[KafkaMessage]]] = {}
    published: ClassVar[dict[str, list[KafkaMessage]]] = {}
    outages: ClassVar[list[str]] = []  # "read" / "publish", consumed one per failed call

    def _outage(self, call: str) -> None:
        if call in self.outages:
            self.outages.remove(call)
            raise KafkaUnavailable(f"fake broker down during {call}")

    def read_range(self, topic: str, partition: int, start: int, end: int) -> list[KafkaMessage]:
        self._outage("read")
        return [m for m in self.topics.get((topic, partition), []) if start <= m.offset <= end]

    def end_offsets(self, topics: Any) -> dict[str, dict[int, int]]:
        self._outage("read")
        ends: dict[str, dict[int, int]] = {}
        for (topic, partition), messages in self.topics.items():
            if topic in topics:
                ends.setdefault(topic, {})[partition] = max((m.offset for m in messages), default=-1) + 1
        return ends

    def publish(self, topic: str, messages: Any) -> None:
        self._outage("publish")
        self.published.setdefault(topic, []).extend(messages)


@pytest.fixture(autouse=True)
def fake_kafka() -> Iterator[FakeKafka]:
    FakeKafka.topics.clear()
    FakeKafka.published.clear()
    FakeKafka.outages.clear()
    yield FakeKafka()


def resources(kafka: FakeKafka) -> dict[str, Any]:
    return {
        "kafka": kafka,
        "dead_letters": DeadLetterResource(kafka=kafka),
        "notifications": NotificationsResource(kafka=kafka),
        "metrics": MetricsResource(),
    }


def order(i: int, **extra: Any) -> str:
    return json.dumps({"order_id": f"o-{i}", "customer": f"c-{i % 3}", "amount": 2.5, **extra})


TOPIC = "orders.test"


def stored(values: list[str], key_of: Any = lambda i: f"k-{i % 3}") -> list[KafkaMessage]:
    """Records as the broker holds them, with a header the DLQ must keep."""
    return [
        KafkaMessage(i, 1_700_000_000_000 + i, key_of(i).encode() if key_of(i) is not None else None,
                     v.encode(), (("trace", f"t-{i}".encode()),))
        for i, v in enumerate(values)
    ]


def run_config(values: list[str], inline: bool = True, batch_id: str = "batch-1",
               **ops: Any) -> dict[str, Any]:
    """The run config the worker sends (service/delivery.py run_config), records inline or not."""
    FakeKafka.topics[(TOPIC, 0)] = stored(values)
    config: dict[str, Any] = {
        "topic": TOPIC, "partition": 0, "offset_start": 0, "offset_end": len(values) - 1,
        "record_count": len(values), "batch_id": batch_id,
    }
    if inline:
        config["records"] = [
            {"offset": m.offset, "timestamp_ms": m.timestamp_ms, "key": orders.key_text(m.key), "value": v}
            for m, v in zip(FakeKafka.topics[(TOPIC, 0)], values, strict=True)
        ]
    return {"ops": {"read_batch": {"config": config}, **{op: {"config": c} for op, c in ops.items()}}}


def run_tags(config: dict[str, Any]) -> dict[str, str]:
    """The tags the worker puts on a batch run (service/delivery.py run_tags)."""
    batch = config["ops"]["read_batch"]["config"]
    names = ("topic", "partition", "offset_start", "offset_end", "record_count", "batch_id")
    return {f"kafka/{name}": str(batch[name]) for name in names}


def execute(values: list[str], kafka: FakeKafka, *, instance: dg.DagsterInstance | None = None,
            **kwargs: Any) -> dg.ExecuteInProcessResult:
    config = run_config(values, **kwargs)
    return process_orders_job.execute_in_process(run_config=config, resources=resources(kafka), instance=instance,
                                                 tags=run_tags(config), raise_on_error=False)


def events_of(result: dg.ExecuteInProcessResult, event_type: dg.DagsterEventType) -> list[dg.DagsterEvent]:
    return [e for e in result.all_events if e.event_type == event_type]


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.event_specific_data.check_name: e.event_specific_data  # type: ignore[union-attr]
            for e in events_of(result, dg.DagsterEventType.ASSET_CHECK_EVALUATION)}


def notifications(kind: str | None = None) -> list[dict[str, Any]]:
    bodies = [json.loads(m.value or b"") for m in FakeKafka.published.get(DEFAULT_NOTIFICATIONS_TOPIC, [])]
    return [b for b in bodies if kind is None or b["event"] == kind]


BAD = ["[1, 2]", json.dumps({"customer": "c-9", "amount": 1})]  # not an object; no order_id
MIXED = [order(i) for i in range(6)] + BAD + [order(1), order(7, amount="free")]  # + a duplicate, a bad amount


def refund(i: int, amount: float = 1.25) -> str:
    return json.dumps({"type": REFUND_ISSUED, "refund_id": f"r-{i}", "order_id": f"o-{i}", "customer": f"c-{i % 3}",
                       "amount": amount, "currency": "EUR"})


# One topic, two routes: orders (value.type = order.created) and refunds (value.type = refund.issued).
EVENTS = [order(0, type=ORDER_CREATED), refund(1), order(2, type=ORDER_CREATED), "not json", refund(4, 3.5),
          order(5, type=ORDER_CREATED), json.dumps({"order_id": "o-6", "customer": "c-0", "amount": 2.5}),
          refund(7, 0.25)]


def match_of(event_type: str) -> str:
    """The route's `match` as the worker puts it in run config: `Match.to_json`."""
    return compile_match({"value.type": event_type}).to_json()


def route_run_config(values: list[str], event_type: str, batch_op: str, inline: bool = False) -> dict[str, Any]:
    """One route's batch over a topic it shares, as the worker cuts it: the records of `event_type` only."""
    FakeKafka.topics[(TOPIC, 0)] = stored(values)
    taken = [(m, v) for m, v in zip(FakeKafka.topics[(TOPIC, 0)], values, strict=True)
             if v.startswith("{") and json.loads(v).get("type") == event_type]
    config: dict[str, Any] = {
        "topic": TOPIC, "partition": 0, "offset_start": taken[0][0].offset, "offset_end": taken[-1][0].offset,
        "record_count": len(taken), "batch_id": f"{event_type}-batch", "match": match_of(event_type),
    }
    if inline:
        config["records"] = [{"offset": m.offset, "timestamp_ms": m.timestamp_ms, "key": orders.key_text(m.key),
                              "value": v} for m, v in taken]
    return {"ops": {batch_op: {"config": config}}}


def execute_route(job: dg.JobDefinition, config: dict[str, Any], kafka: FakeKafka) -> dg.ExecuteInProcessResult:
    [batch] = config["ops"].values()
    names = ("topic", "partition", "offset_start", "offset_end", "record_count", "batch_id")
    tags = {f"kafka/{name}": str(batch["config"][name]) for name in names}
    return job.execute_in_process(run_config=config, resources=resources(kafka), tags=tags, raise_on_error=False)


# -- 1. Output events: several named outputs, each with metadata ----------------------------------


def test_read_batch_yields_three_named_outputs_each_with_metadata(fake_kafka: FakeKafka) -> None:
    config = KafkaBatch(**run_config(MIXED)["ops"]["read_batch"]["config"])

    outputs = {o.output_name: o for o in read_batch(dg.build_op_context(), config=config, kafka=fake_kafka)}

    assert set(outputs) == {"batch", "orders", "rejects"}
    assert outputs["batch"].metadata["records_received"].value == 10
    assert outputs["batch"].metadata["records_source"].value == "inline"
    assert outputs["orders"].metadata["order_count"].value == 8
    assert outputs["rejects"].metadata["reject_count"].value == 2
    assert outputs["rejects"].metadata["reject_offsets"].value == [6, 7]
    assert outputs["rejects"].metadata["reject_reasons"].value == {"NotAnObject": 1, "MissingOrderId": 1}


# -- 2, 3, 5, 6, 7, 9. The whole batch job on a batch with bad records ------------------------------


def test_a_batch_with_bad_records_materializes_and_reports_checks_and_dead_letters(fake_kafka: FakeKafka) -> None:
    result = execute(MIXED, fake_kafka)

    assert result.success
    [materialization] = result.asset_materializations_for_node("publish_batch")
    assert materialization.asset_key == ORDER_BATCHES
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata | {"processing_time_s": 0, "records_per_s": 0, "event_lag_s": 0} == metadata | {
        "record_count": 10, "kafka_topic": TOPIC, "kafka_partition": 0, "offset_start": 0, "offset_end": 9,
        "batch_id": "batch-1", "records_source": "inline", "orders_processed": 8, "dead_letter_count": 2,
        "dagster/row_count": 8, "amount_total": 17.5, "sub_batches": 3, "completeness": 0.8,
        "nonconforming_count": 3, "duplicate_count": 1, "processing_time_s": 0, "records_per_s": 0,
        "event_lag_s": 0,
    }
    assert isinstance(materialization.metadata["processing_time_s"], dg.FloatMetadataValue)
    assert isinstance(materialization.metadata["record_count"], dg.IntMetadataValue)

    evaluations = check_evaluations(result)
    assert evaluations["completeness"].passed and evaluations["completeness"].blocking
    assert evaluations["completeness"].severity == dg.AssetCheckSeverity.ERROR
    assert not evaluations["schema_conformance"].passed
    assert evaluations["schema_conformance"].severity == dg.AssetCheckSeverity.WARN
    assert evaluations["schema_conformance"].metadata["nonconforming_count"].value == 3
    assert not evaluations["duplicate_keys"].passed
    assert evaluations["duplicate_keys"].metadata["duplicated_order_ids"].value == {"o-1": 2}

    [observation] = [e.event_specific_data.asset_observation  # type: ignore[union-attr]
                     for e in events_of(result, dg.DagsterEventType.ASSET_OBSERVATION)]
    assert observation.asset_key == ORDER_BATCHES
    assert observation.metadata["dead_letter_count"].value == 2
    assert observation.metadata["dlq_stage"].value == "process"

    letters = FakeKafka.published[DEFAULT_DLQ_TOPIC]
    assert [m.offset for m in letters] == [6, 7]
    headers = dict(letters[0].headers)
    assert headers["trace"] == b"t-6"  # the original header, read back from Kafka
    assert headers["dlq.stage"] == b"process"
    assert headers["dlq.run_id"] == result.run_id.encode()
    assert headers["dlq.topic"] == TOPIC.encode() and headers["dlq.offset"] == b"6"
    assert headers["dlq.error.class"] == b"NotAnObject"
    assert letters[0].value == BAD[0].encode() and letters[0].key == b"k-0"

    [published] = notifications("batch_published")
    assert published["run_id"] == result.run_id
    assert published["batch_id"] == "batch-1" and published["dead_letter_count"] == 2


def test_batches_fan_out_by_key_into_stable_mapping_keys(fake_kafka: FakeKafka) -> None:
    result = execute([order(i) for i in range(12)], fake_kafka)

    assert result.success
    expected = sorted({orders.mapping_key(f"k-{i % 3}", 8) for i in range(12)})
    mapped = sorted(e.step_key.split("[")[1].rstrip("]") for e in events_of(result, dg.DagsterEventType.STEP_SUCCESS)
                    if e.step_key and e.step_key.startswith("total_orders["))
    assert mapped == expected
    assert orders.mapping_key("k-1", 8) == orders.mapping_key("k-1", 8) != orders.mapping_key(None, 8)
    assert orders.mapping_key(None, 8) == "no_key"
    subtotals = [result.output_for_node("total_orders", "result")[k] for k in expected]
    assert sum(s.record_count for s in subtotals) == 12


def test_split_by_key_yields_dynamic_outputs_with_metadata() -> None:
    batch = orders.classify(stored([order(i) for i in range(5)]))

    outputs = list(split_by_key(config=SplitConfig(sub_batches=2), orders=batch.orders))

    assert all(isinstance(o, dg.DynamicOutput) for o in outputs)
    assert sum(o.metadata["record_count"].value for o in outputs) == 5
    assert [o.mapping_key for o in outputs] == sorted(o.mapping_key for o in outputs)


def test_large_batches_are_read_back_from_kafka(fake_kafka: FakeKafka) -> None:
    result = execute([order(i) for i in range(4)], fake_kafka, inline=False)

    assert result.success
    [materialization] = result.asset_materializations_for_node("publish_batch")
    assert materialization.metadata["records_source"].value == "kafka"
    assert materialization.metadata["record_count"].value == 4


def test_a_batch_read_back_keeps_only_the_records_its_route_matches(fake_kafka: FakeKafka) -> None:
    config = route_run_config(EVENTS, ORDER_CREATED, "read_batch")

    result = execute_route(process_orders_job, config, fake_kafka)

    assert result.success
    [materialization] = result.asset_materializations_for_node("publish_batch")
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata | {"offset_start": 0, "offset_end": 5, "record_count": 3, "records_received": 3,
                       "orders_processed": 3, "completeness": 1.0, "dead_letter_count": 0,
                       "records_source": "kafka"} == metadata
    assert DEFAULT_DLQ_TOPIC not in FakeKafka.published  # refunds, "not json" and the untyped order are not its


def test_selection_follows_the_route_pattern_on_key_headers_and_value() -> None:
    messages = stored(EVENTS)

    assert selected(messages, None) == messages
    assert [m.offset for m in selected(messages, match_of(REFUND_ISSUED))] == [1, 4, 7]
    on_meta = compile_match({"key": "k-0", "headers.trace": {"prefix": "t-"}}).to_json()
    assert [m.offset for m in selected(messages, on_meta)] == [0, 3, 6]  # "not json" too: no value condition
    both = compile_match({"key": "k-0", "value.order_id": {"exists": True}}).to_json()
    assert [m.offset for m in selected(messages, both)] == [0, 6]
    assert selected([KafkaMessage(0, None, None, None)], match_of(ORDER_CREATED)) == []


def test_a_batch_whose_match_is_not_a_pattern_fails_its_run(fake_kafka: FakeKafka) -> None:
    config = route_run_config(EVENTS, ORDER_CREATED, "read_batch")
    config["ops"]["read_batch"]["config"]["match"] = "{not json"

    result = execute_route(process_orders_job, config, fake_kafka)

    assert not result.success
    [failure] = events_of(result, dg.DagsterEventType.STEP_FAILURE)
    assert "not a pattern" in (failure.step_failure_data.user_failure_data.description or "")  # type: ignore[union-attr]


# -- The refunds job: a second route on the orders' topic ------------------------------------------


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "kafka"])
def test_a_refund_batch_materializes_with_its_provenance(fake_kafka: FakeKafka, inline: bool) -> None:
    config = route_run_config(EVENTS, REFUND_ISSUED, "read_refunds", inline=inline)

    result = execute_route(process_refunds_job, config, fake_kafka)

    assert result.success
    [materialization] = result.asset_materializations_for_node("read_refunds")
    assert materialization.asset_key == REFUND_BATCHES
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert metadata | {"processing_time_s": 0, "records_per_s": 0, "event_lag_s": 0} == metadata | {
        "kafka_topic": TOPIC, "kafka_partition": 0, "offset_start": 1, "offset_end": 7, "record_count": 3,
        "batch_id": "refund.issued-batch", "records_source": "inline" if inline else "kafka",
        "records_received": 3, "refunds_processed": 3, "unprocessable_count": 0, "dagster/row_count": 3,
        "amount_refunded": 5.0, "processing_time_s": 0, "records_per_s": 0, "event_lag_s": 0,
    }
    assert isinstance(materialization.metadata["amount_refunded"], dg.FloatMetadataValue)
    [published] = notifications("batch_published")
    assert published["job"] == "process_refunds" and published["run_id"] == result.run_id
    assert (published["batch_id"], published["amount_refunded"], published["refunds_processed"]) == (
        "refund.issued-batch", 5.0, 3)


def test_records_that_are_not_refunds_are_counted_not_summed(fake_kafka: FakeKafka) -> None:
    values = [refund(0), json.dumps({"type": REFUND_ISSUED, "refund_id": "r-1", "amount": "lots"}),
              json.dumps({"type": REFUND_ISSUED, "amount": 9})]
    config = route_run_config(values, REFUND_ISSUED, "read_refunds")

    result = execute_route(process_refunds_job, config, fake_kafka)

    assert result.success
    [materialization] = result.asset_materializations_for_node("read_refunds")
    assert materialization.metadata["unprocessable_count"].value == 2
    assert materialization.metadata["refunds_processed"].value == 1
    assert materialization.metadata["amount_refunded"].value == 1.25


def test_a_refund_batch_gone_from_kafka_fails_with_a_notification(fake_kafka: FakeKafka) -> None:
    config = route_run_config(EVENTS, REFUND_ISSUED, "read_refunds")
    FakeKafka.topics.clear()

    result = execute_route(process_refunds_job, config, fake_kafka)

    assert not result.success
    assert not result.asset_materializations_for_node("read_refunds")
    [failed] = notifications("op_failed")
    assert (failed["job"], failed["op"], failed["batch_id"]) == ("process_refunds", "read_refunds",
                                                                 "refund.issued-batch")


# -- 4. Failure events -----------------------------------------------------------------------------


def test_a_fail_run_record_fails_the_run_with_failure_metadata_and_a_notification(fake_kafka: FakeKafka) -> None:
    result = execute([order(0), order(1, fail_run=True)], fake_kafka)

    assert not result.success
    [failure] = events_of(result, dg.DagsterEventType.STEP_FAILURE)
    data = failure.step_failure_data
    assert failure.step_key == "read_batch"
    assert data.user_failure_data is not None
    assert "fail_run" in (data.user_failure_data.description or "")
    assert data.user_failure_data.metadata["fail_run_offsets"].value == [1]
    assert not result.asset_materializations_for_node("publish_batch")
    [failed] = notifications("op_failed")
    assert failed["op"] == "read_batch" and failed["run_id"] == result.run_id
    assert failed["error_class"] == "Failure"
    assert (failed["kafka_topic"], failed["kafka_partition"], failed["batch_id"]) == (TOPIC, 0, "batch-1")


def test_a_batch_gone_from_kafka_is_unusable(fake_kafka: FakeKafka) -> None:
    config = run_config([order(0)], inline=False)
    FakeKafka.topics.clear()

    result = process_orders_job.execute_in_process(run_config=config, resources=resources(fake_kafka),
                                                   raise_on_error=False)

    assert not result.success
    [failure] = events_of(result, dg.DagsterEventType.STEP_FAILURE)
    assert "unusable" in (failure.step_failure_data.user_failure_data.description or "")  # type: ignore[union-attr]


def test_a_transient_kafka_error_requests_a_retry_inside_the_run(fake_kafka: FakeKafka) -> None:
    FakeKafka.outages.extend(["read", "publish"])

    result = execute([*(order(i) for i in range(4)), *BAD], fake_kafka, inline=False)

    assert result.success
    retried = {e.step_key for e in events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)}
    assert retried == {"read_batch", "dead_letter_rejects"}
    assert len(FakeKafka.published[DEFAULT_DLQ_TOPIC]) == 2


# -- 5. Blocking check ----------------------------------------------------------------------------


def test_completeness_below_threshold_blocks_the_batch(fake_kafka: FakeKafka) -> None:
    result = execute([order(0), *BAD], fake_kafka, publish_batch={"completeness_threshold": 0.5})

    assert not result.success
    completeness = check_evaluations(result)["completeness"]
    assert not completeness.passed and completeness.blocking
    assert completeness.metadata["completeness"].value == pytest.approx(1 / 3, abs=1e-3)
    assert not result.asset_materializations_for_node("publish_batch")
    [failure] = events_of(result, dg.DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "publish_batch"
    assert "blocking asset check" in str(failure.step_failure_data.error)
    assert not notifications("batch_published")
    assert len(FakeKafka.published[DEFAULT_DLQ_TOPIC]) == 2  # dead letters are sent before the audit


def test_check_outcomes_from_an_audit() -> None:
    audit = Audit(expected=10, received=10, processable=4, threshold=0.5, nonconforming_count=0)

    completeness, schema, duplicates = checks.outcomes(audit)

    assert not completeness.passed and completeness.evaluation().blocking
    assert schema.passed and duplicates.passed
    result = completeness.result()
    assert isinstance(result, dg.AssetCheckResult) and result.severity == dg.AssetCheckSeverity.ERROR


def test_the_standalone_checks_reevaluate_the_latest_batch(fake_kafka: FakeKafka) -> None:
    with dg.instance_for_test() as instance:
        execute(MIXED, fake_kafka, instance=instance)
        context = dg.build_asset_check_context(instance=instance)

        results = {r.check_name: r for r in order_batch_checks(context)}

    assert results["completeness"].passed
    assert not results["schema_conformance"].passed
    assert results["duplicate_keys"].metadata["duplicate_count"].value == 1


# -- 2 (assets), 8. Sensors -------------------------------------------------------------------------


def test_the_asset_sensor_launches_the_aggregation_once_per_cursor_advance(fake_kafka: FakeKafka) -> None:
    with dg.instance_for_test() as instance:
        execute(MIXED, fake_kafka, instance=instance)
        first = order_batches_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        [request] = first.run_requests or []
        again = order_batches_sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))
        execute([order(i) for i in range(3)], fake_kafka, instance=instance, batch_id="batch-2")
        later = order_batches_sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))

    storage_id = int(first.cursor or 0)
    assert request.run_key == f"order_batches:{storage_id}"
    assert request.run_config == {"ops": {"order_totals": {"config": {"through_storage_id": storage_id}}}}
    assert not again.run_requests and again.skip_message
    [next_request] = later.run_requests or []
    assert next_request.run_key != request.run_key


def test_order_totals_materialize_running_totals_with_materialize_result(fake_kafka: FakeKafka) -> None:
    with dg.instance_for_test() as instance:
        execute(MIXED, fake_kafka, instance=instance)
        first = dg.materialize_to_memory([order_totals], instance=instance)
        execute([order(i) for i in range(3)], fake_kafka, instance=instance, batch_id="batch-2")
        second = dg.materialize_to_memory([order_totals], instance=instance)

    [m1] = first.asset_materializations_for_node("order_totals")
    [m2] = second.asset_materializations_for_node("order_totals")
    assert m1.asset_key == ORDER_TOTALS
    assert m1.metadata["total_batches"].value == 1 and m1.metadata["total_records"].value == 10
    assert m2.metadata["batches_added"].value == 1
    assert m2.metadata["total_records"].value == 13 and m2.metadata["total_amount"].value == 25.0
    assert m2.metadata["through_storage_id"].value > m1.metadata["through_storage_id"].value


def test_totals_add_batches_from_their_metadata() -> None:
    batch = {"record_count": dg.MetadataValue.int(5), "orders_processed": dg.MetadataValue.int(4),
             "amount_total": dg.MetadataValue.float(1.25)}

    totals = Totals().add(7, batch).add(9, batch)

    assert (totals.batches, totals.records, totals.orders, totals.amount, totals.through_storage_id) == (
        2, 10, 8, 2.5, 9)
    assert Totals.from_metadata(totals.metadata()) == totals


def test_the_run_failure_sensor_publishes_a_notification(fake_kafka: FakeKafka) -> None:
    with dg.instance_for_test() as instance:
        result = execute([order(0, fail_run=True)], fake_kafka, instance=instance)
        context = dg.build_run_status_sensor_context(
            sensor_name="notify_run_failure", dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event(),
            resources={"notifications": NotificationsResource(kafka=fake_kafka)},
        ).for_run_failure()
        with context:
            notify_run_failure(context)

    [failed] = notifications("run_failed")
    assert failed["run_id"] == result.run_id and failed["job"] == "process_orders"
    assert failed["failed_steps"] == ["read_batch"]
    assert (failed["kafka_topic"], failed["offset_end"], failed["record_count"]) == (TOPIC, 0, 1)


# -- 3. Observations of the Kafka topics ------------------------------------------------------------


def test_the_topic_observer_reports_end_offsets_without_a_run(fake_kafka: FakeKafka) -> None:
    FakeKafka.topics[("a", 0)] = stored([order(0), order(1)])
    FakeKafka.topics[("a", 1)] = stored([order(2)])
    observer = build_kafka_topic_observer(["a", "missing"])

    with dg.instance_for_test() as instance:
        first = observer.evaluate_tick(dg.build_sensor_context(instance=instance, resources={"kafka": fake_kafka}))
        again = observer.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor,
                                                               resources={"kafka": fake_kafka}))

    [observation] = first.asset_events
    assert isinstance(observation, dg.AssetObservation)
    assert observation.asset_key == topic_key("a") == dg.AssetKey(["kafka", "a"])
    assert observation.metadata["end_offsets"].value == {"0": 2, "1": 1}
    assert observation.metadata["end_offset_total"].value == 3
    assert not again.asset_events and again.skip_message == "end offsets unchanged"


def test_the_topics_are_observable_source_assets_with_data_versions(fake_kafka: FakeKafka) -> None:
    FakeKafka.topics[("a", 0)] = stored([order(0), order(1)])
    topics = build_kafka_topics(["a"])
    job = dg.define_asset_job("observe_topics", selection=[topic_key("a")])
    definitions = dg.Definitions(assets=[topics], jobs=[job], resources={"kafka": fake_kafka})

    result = definitions.resolve_job_def("observe_topics").execute_in_process()

    [event] = events_of(result, dg.DagsterEventType.ASSET_OBSERVATION)
    observation = event.event_specific_data.asset_observation  # type: ignore[union-attr]
    assert observation.asset_key == topic_key("a")
    assert observation.metadata["end_offset_total"].value == 2
    assert observation.data_version


def test_the_asset_graph_starts_at_kafka() -> None:
    graph = build_definitions(["t1", "t2"]).resolve_asset_graph()

    assert graph.get(ORDER_BATCHES).parent_keys == {topic_key("t1"), topic_key("t2")}
    assert graph.get(ORDER_TOTALS).parent_keys == {ORDER_BATCHES}
    assert {c.name for c in graph.get(ORDER_BATCHES).check_keys} >= {
        "completeness", "schema_conformance", "duplicate_keys"}


def test_source_topics_come_from_the_routes_file(tmp_path: Any) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\ntopic = "x.orders"\njob = "process_orders"\n')

    assert source_topics({"KAFKA_DAGSTER_ROUTES": str(routes)}) == ["x.orders"]
    assert source_topics({"KAFKA_DAGSTER_ROUTES": str(tmp_path / "none.toml")}) == ["demo.orders"]


def test_a_topic_with_several_routes_is_one_source_and_patterns_are_skipped(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('''
[[routes]]
name = "orders"
topic = "shop.events"
job = "process_orders"
match = { "value.type" = "order.created" }

[[routes]]
name = "audit"
topic_pattern = "audit-.*"
job = "process_orders"

[[routes]]
name = "refunds"
topic = "shop.events"
job = "process_refunds"
batch_op = "read_refunds"

[[routes]]
topic = "x.orders"
job = "process_orders"
''')

    with caplog.at_level("INFO", logger="dagster_project.assets"):
        topics = source_topics({"KAFKA_DAGSTER_ROUTES": str(routes)})

    assert topics == ["shop.events", "x.orders"]
    assert "audit-.*" in caplog.text and "topic_pattern" in caplog.text
    graph = build_definitions(topics).resolve_asset_graph()
    assert graph.get(REFUND_BATCHES).parent_keys == {topic_key("shop.events"), topic_key("x.orders")}


def test_routes_by_pattern_only_model_no_topic_and_still_load(tmp_path: Any) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\ntopic_pattern = "audit-.*"\njob = "process_orders"\n')

    topics = source_topics({"KAFKA_DAGSTER_ROUTES": str(routes)})
    definitions = build_definitions(topics)

    assert topics == []
    dg.Definitions.validate_loadable(definitions)
    assert {s.name for s in definitions.sensors or []} == {"order_batches_sensor", "notify_run_failure"}
    assert definitions.resolve_asset_graph().get(ORDER_BATCHES).parent_keys == set()


# -- 9, 10. Dead letters and resources --------------------------------------------------------------


def test_dead_letters_keep_the_record_and_add_the_contract_headers() -> None:
    original = KafkaMessage(41, 1234, b"key", b"[1]", (("h", b"v"), ("dlq.stage", b"validate")))
    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

    letter = dead_letter(original, topic="t", partition=3, error_class="NotAnObject",
                         error_message="x" * 5000, run_id="run-1", now=now)

    headers = dict(letter.headers)
    assert (letter.key, letter.value, letter.timestamp_ms, letter.offset) == (b"key", b"[1]", 1234, 41)
    assert letter.headers[0] == ("h", b"v")
    assert headers == headers | {
        "dlq.topic": b"t", "dlq.partition": b"3", "dlq.offset": b"41", "dlq.stage": b"process",
        "dlq.error.class": b"NotAnObject", "dlq.attempts": b"1", "dlq.failed_at": b"2026-01-02T03:04:05.678Z",
        "dlq.run_id": b"run-1",
    }
    assert len(headers["dlq.error.message"].decode()) == 1024
    assert [k for k, _ in dlq_headers(original, topic="t", partition=3, error_class="E", error_message="m",
                                      run_id="r")].count("dlq.stage") == 1


def test_classify_separates_orders_rejects_and_fail_run() -> None:
    values = [order(0), "not json", "[1]", "null", json.dumps({"amount": 1}), order(1, fail_run=True),
              json.dumps({"order_id": "o-2"})]

    result = orders.classify(stored(values))

    assert [o.order_id for o in result.orders] == ["o-0", "o-1", "o-2"]
    assert [(r.offset, r.error_class) for r in result.rejects] == [
        (1, "InvalidJson"), (2, "NotAnObject"), (3, "NotAnObject"), (4, "MissingOrderId")]
    assert result.fail_run_offsets == [5]
    assert result.orders[0].conforms and not result.orders[2].conforms


def test_metrics_resource_renders_typed_metadata() -> None:
    metadata = MetricsResource(lag_budget_s=10).batch_metadata(
        record_count=100, processing_time_s=2.0, oldest_timestamp_ms=95_000, now_s=100.0)

    assert metadata["records_per_s"] == dg.MetadataValue.float(50.0)
    assert metadata["event_lag_s"] == dg.MetadataValue.float(5.0)
    assert metadata["within_lag_budget"] == dg.MetadataValue.bool(True)


def test_env_or_uses_an_env_var_only_when_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_DAGSTER_DLQ_TOPIC", raising=False)
    assert env_or("KAFKA_DAGSTER_DLQ_TOPIC", "d") == "d"
    monkeypatch.setenv("KAFKA_DAGSTER_DLQ_TOPIC", "custom.dlq")
    value = env_or("KAFKA_DAGSTER_DLQ_TOPIC", "d")
    assert isinstance(value, dg.EnvVar) and value.get_value() == "custom.dlq"


def test_the_resources_read_their_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_DAGSTER_DLQ_TOPIC", "custom.dlq")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9093")

    definitions = build_definitions(["t"])
    job = definitions.get_job_def("process_orders")

    with dg.build_resources({k: v for k, v in job.resource_defs.items()
                             if k in ("dead_letters", "kafka")}) as built:
        assert built.dead_letters.topic == "custom.dlq"
        assert built.kafka.bootstrap_servers == "broker:9093"


# -- The code location loads ------------------------------------------------------------------------


def test_the_definitions_load_and_validate() -> None:
    dg.Definitions.validate_loadable(defs)
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"process_orders", "process_refunds", "aggregate_orders"}
    assert {s.name for s in defs.sensors or []} == {
        "order_batches_sensor", "notify_run_failure", "kafka_topic_observer"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in defs.sensors or [])
    assert defs.get_job_def("process_orders").executor_def == dg.in_process_executor
    assert defs.get_job_def("process_refunds").executor_def == dg.in_process_executor

    validated = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "dagster_project.definitions"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
