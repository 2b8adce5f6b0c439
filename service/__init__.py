"""kafka-dagster: turns Kafka messages into Dagster runs, one run per micro-batch."""

__version__ = "0.1.0"
