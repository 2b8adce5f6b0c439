"""`make bench`: kafka-dagster measured against a bare consumer and a naive Faust agent.

One run starts its own broker (Apache Kafka 3.9.1; Tansu with `--broker tansu`)
and Dagster, as the tests do, produces one data set, and measures every
contender on it. See `python -m bench --help`.
"""
