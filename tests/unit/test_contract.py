"""What the code location may import from the worker: the contract's pure modules, nothing else."""

from __future__ import annotations

import json
import subprocess
import sys

from service import contract, dlq
from tests.support import ROOT

# The modules of `service` that `dagster_project` imports (docs/dagster_project.md says why).
SHARED = {"service", "service.batching", "service.records", "service.contract", "service.dlq", "service.errors",
          "service.frames", "service.kafka", "service.kafka.admin", "service.kafka.errors", "service.kafka.probe",
          "service.kafka.producer", "service.kafka.reading", "service.kafka.security", "service.matching",
          "service.settings", "service.verdicts"}


def imported_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=120).stdout
    return set(json.loads(out))


def test_the_code_location_imports_only_the_shared_modules_of_the_worker() -> None:
    modules = imported_after("import dagster_project.definitions")

    assert {m for m in modules if m.split(".")[0] == "service"} <= SHARED
    assert "faust" not in modules and "httpx" not in modules


def test_the_dead_letter_format_needs_no_third_party_library() -> None:
    modules = imported_after("import service.dlq")

    assert not {m.split(".")[0] for m in modules} & {"faust", "aiokafka", "httpx", "dagster", "jsonschema"}


def test_match_patterns_need_no_third_party_library() -> None:
    modules = imported_after("import service.matching")

    assert not {m.split(".")[0] for m in modules} & {"faust", "aiokafka", "httpx", "dagster", "jsonschema"}


def test_the_worker_and_the_cli_use_the_contract_stages() -> None:
    assert dlq.STAGES is contract.STAGES
    assert set(dlq.PRE_LAUNCH_STAGES) <= set(contract.STAGES)


def test_the_run_config_the_worker_writes_is_the_one_the_toolkit_reads() -> None:
    """`service.run_request` writes the contract's config names; `toolkit.KafkaBatch` must take each of them."""
    from dagster_project.toolkit import KafkaBatch, KafkaRecord
    from service.run_request import inline_records_json
    from tests.unit.factories import make_record

    batch_fields = set(KafkaBatch.model_fields)
    optional = {contract.CONFIG_RECORDS_JSON, contract.CONFIG_MATCH, contract.CONFIG_VALUE_FORMAT,
                contract.CONFIG_KEY_FORMAT}
    assert set(contract.BATCH_CONFIG_FIELDS) | optional <= batch_fields
    assert tuple(KafkaRecord.model_fields) == (*contract.INLINE_RECORD_FIELDS, contract.INLINE_VALUE_SCHEMA_ID,
                                               contract.INLINE_VALUE_SUBJECT, contract.INLINE_KEY_SCHEMA_ID,
                                               contract.INLINE_KEY_SUBJECT)
    [inline] = json.loads(inline_records_json([make_record(7, value=b"{}")]))
    assert tuple(inline) == contract.INLINE_RECORD_FIELDS
