"""Development tooling: the embedded stack, `kafka-dagster dev` and the demo orders.

Only `kafka-dagster dev` (and `produce --demo`), the tests and the benchmark import
this package; the worker never does.
"""
