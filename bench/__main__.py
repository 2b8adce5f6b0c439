"""`python -m bench [--quick]`: what `make bench` and `make bench-quick` run."""

from __future__ import annotations

import argparse
import json
import logging
import os

from bench import report
from bench.broker import BROKERS
from bench.config import FULL, QUICK
from bench.run import PARTS, RESULTS, run, write_outputs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages and repetitions (about 7 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's logs in .bench-stack/")
    parser.add_argument("--profile", action="store_true",
                        help="record the service workers of the first repetition with py-spy "
                             "(collapsed stacks: bench/results/profile-service*.txt)")
    parser.add_argument("--broker", choices=BROKERS, default="apache",
                        help="Apache Kafka 3.9.1 (the default, as deployed) or Tansu (the figures before 2026-12-07)")
    parser.add_argument("--only", choices=PARTS,
                        help="one part on the same stack and data set: the sensor contender beside the worker, or "
                             "the throughput contenders (written to bench/results/only-PART.json, no table)")
    args = parser.parse_args()
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("service").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results = run(QUICK if args.quick else FULL, keep=args.keep, profile=args.profile, broker_kind=args.broker,
                  only=args.only)
    if args.only:
        path = RESULTS / f"only-{args.only}.json"
        report.write_json(results, path)
        print(json.dumps(report.without_samples(results), indent=2))
        print(f"\nraw numbers: {path} (took {results['elapsed_s']:.0f} s)")
        return
    path = write_outputs(results)
    print()
    print(report.table(results))
    print(f"\nraw numbers: {path}\nplot: {path.with_suffix('.png')}\n(took {results['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
