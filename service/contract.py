"""The names the worker and the Dagster code location agree on, defined once.

Run tags the worker puts on every run it launches, the `dlq.*` headers of a
dead letter and its stages, and the defaults both sides fall back to. Names
only, and no imports beyond the standard library, so that `dagster_project`
can import this module without pulling in the worker. The dead-letter header
*format* (which headers, how they are written) lives in `service.dlq`.
"""

from __future__ import annotations

# -- run tags: where a run's batch sits in Kafka, and who launched it ------------
TAG_TOPIC = "kafka/topic"
TAG_PARTITION = "kafka/partition"
TAG_OFFSET_START = "kafka/offset_start"
TAG_OFFSET_END = "kafka/offset_end"
TAG_RECORD_COUNT = "kafka/record_count"
TAG_CONSUMER_GROUP = "kafka/consumer_group"
TAG_ROUTE = "kafka/route"
TAG_BATCH_ID = "kafka/batch_id"
TAG_DUPLICATE_OF = "kafka/duplicate_of"  # set by a run that stood down: the run that has its batch
# Dagster's own tag for a run's partition: the worker sets it on a partitioned route's runs.
TAG_DAGSTER_PARTITION = "dagster/partition"

# -- run config: the batch as `ops.<batch_op>.config` (dagster_project.toolkit.KafkaBatch) ------------------
CONFIG_TOPIC = "topic"
CONFIG_PARTITION = "partition"
CONFIG_OFFSET_START = "offset_start"
CONFIG_OFFSET_END = "offset_end"
CONFIG_RECORD_COUNT = "record_count"
CONFIG_BATCH_ID = "batch_id"
# The fields an op's or asset's config must have to take the batch.
BATCH_CONFIG_FIELDS = (CONFIG_TOPIC, CONFIG_PARTITION, CONFIG_OFFSET_START, CONFIG_OFFSET_END, CONFIG_RECORD_COUNT,
                       CONFIG_BATCH_ID)
CONFIG_RECORDS_JSON = "records_json"  # the records inline: one JSON array of objects of INLINE_RECORD_FIELDS
CONFIG_MATCH = "match"  # the route's `match` as JSON, when the offset range holds other routes' records too
CONFIG_VALUE_FORMAT = "value_format"  # the route's framed value format (avro, protobuf, json_schema), if any
CONFIG_KEY_FORMAT = "key_format"  # the route's framed key format, if any
INLINE_RECORD_FIELDS = ("offset", "timestamp_ms", "key", "value")
# A framed value's writer schema (its registry id, or "guid <uuid>") and subject, beside its decoded JSON value.
INLINE_VALUE_SCHEMA_ID = "value_schema_id"
INLINE_VALUE_SUBJECT = "value_subject"
INLINE_KEY_SCHEMA_ID = "key_schema_id"  # the same for a framed key, whose `key` is then its decoded text
INLINE_KEY_SUBJECT = "key_subject"

# -- dead letters: the headers added to the original record ---------------------
HEADER_PREFIX = "dlq."
HEADER_TOPIC = "dlq.topic"
HEADER_PARTITION = "dlq.partition"
HEADER_OFFSET = "dlq.offset"
HEADER_STAGE = "dlq.stage"
HEADER_ERROR_CLASS = "dlq.error.class"
HEADER_ERROR_MESSAGE = "dlq.error.message"
HEADER_ATTEMPTS = "dlq.attempts"
HEADER_FAILED_AT = "dlq.failed_at"
HEADER_RUN_ID = "dlq.run_id"
HEADER_ROUTE = "dlq.route"  # the route the record was dead-lettered for
# On a record `kafka-dagster dlq replay` sent back: "<topic>/<partition>/<offset>" of the original.
REPLAY_HEADER = "kafka-dagster.replay-of"

# Where a record failed: `dlq.stage`.
STAGE_DECODE = "decode"
STAGE_VALIDATE = "validate"
STAGE_ROUTE = "route"
STAGE_LAUNCH = "launch"
STAGE_RUN = "run"
STAGE_PROCESS = "process"  # inside a run, by the code location
STAGES = (STAGE_DECODE, STAGE_VALIDATE, STAGE_ROUTE, STAGE_LAUNCH, STAGE_RUN, STAGE_PROCESS)

# -- defaults ----------------------------------------------------------------------
DEFAULT_DLQ_TOPIC = "kafka-dagster.dlq"
DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"
DEFAULT_ROUTES_FILE = "routes.toml"
