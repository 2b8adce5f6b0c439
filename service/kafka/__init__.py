"""aiokafka at the edge: topics, a producer, readers, probes and transactions, with errors translated.

One module per concern; this file only re-exports the names the rest of the
code imports from `service.kafka`:

- `errors`: every aiokafka error translated in one place, by aiokafka's own
  `retriable` flag (`BrokerUnavailable`, `KafkaRejected`, `KafkaNotAuthorized`);
  the rest of the code never sees aiokafka exceptions.
- `security`: the TLS/SASL settings and the arguments every Kafka client takes.
- `admin`: which topics exist, which the worker may not Describe, their
  partitions, and creating them.
- `producer`: the plain producer (acks=all).
- `reading`: readers without a consumer group, of committed records only.
- `probe`: a TCP connection and a TLS/SASL handshake (at start, and while
  the worker runs).
- `transactions`: one transactional producer per owned partition, for dead
  letters written with the offset commit that covers them.
- `access`: the broker refusing the worker (ACLs, credentials): which routes
  pause, until when.

Importing the package imports neither Faust nor the worker's route modules:
the Dagster code location imports it too (`tests/unit/test_contract.py`).
`transactions` and `access` are imported by their module name.
"""

from service.kafka.admin import ensure_topics, existing_topics, topic_partitions, unauthorized_topics
from service.kafka.errors import kafka_error, map_kafka_errors, not_authorized
from service.kafka.probe import check_security, login_refused, tcp_reachable
from service.kafka.producer import Producer
from service.kafka.reading import READ_COMMITTED, read_range, read_topic, stream_topic
from service.kafka.security import PLAINTEXT, KafkaSecurity

__all__ = ["PLAINTEXT", "READ_COMMITTED", "KafkaSecurity", "Producer", "check_security", "ensure_topics",
           "existing_topics", "kafka_error", "login_refused", "map_kafka_errors", "not_authorized", "read_range",
           "read_topic", "stream_topic", "tcp_reachable", "topic_partitions", "unauthorized_topics"]
