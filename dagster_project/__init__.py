"""The Dagster code location that processes the batches kafka-dagster launches."""
