"""The lag gauge: what `kafka_dagster_consumer_lag` and /status show for each assigned partition."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.health import ConsumerLag
from service.metrics import Metrics
from service.records import TP

P0, P1 = TP("orders", 0), TP("orders", 1)


def gauge(metrics: Metrics, tp: TP) -> float | None:
    return metrics.registry.get_sample_value("kafka_dagster_consumer_lag",
                                             {"topic": tp.topic, "partition": str(tp.partition)})


def test_each_partition_with_a_committed_offset_gets_its_lag_on_the_gauge_and_in_status() -> None:
    metrics = Metrics(CollectorRegistry())
    lag = ConsumerLag(metrics)

    lag.update({P0: 100, P1: 50}, {P0: 40, P1: None}, {})

    assert lag.lags == {P0: 60}  # P1: nothing committed, no lag to say
    assert gauge(metrics, P0) == 60 and gauge(metrics, P1) is None


def test_the_end_is_never_below_the_next_offset_read_and_lag_never_negative() -> None:
    metrics = Metrics(CollectorRegistry())
    lag = ConsumerLag(metrics)

    lag.update({P0: 10, P1: 5}, {P0: 10, P1: 9}, {P0: 30})

    assert lag.lags == {P0: 20, P1: 0}


def test_a_partition_no_longer_held_loses_its_gauge() -> None:
    metrics = Metrics(CollectorRegistry())
    lag = ConsumerLag(metrics)
    lag.update({P0: 100, P1: 50}, {P0: 40, P1: 45}, {})

    lag.update({P1: 60}, {P1: 45}, {})

    assert lag.lags == {P1: 15}
    assert gauge(metrics, P0) is None and gauge(metrics, P1) == 15
