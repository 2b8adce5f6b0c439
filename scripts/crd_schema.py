"""Write a CRD's openAPIV3Schema (descriptions dropped) as YAML, with a header naming its source.

    git show v2.20.2:config/crd/bases/keda.sh_scaledobjects.yaml \
      | python scripts/crd_schema.py "kedacore/keda v2.20.2 config/crd/bases/keda.sh_scaledobjects.yaml" \
      > tests/fixtures/crd-schemas/keda.sh_scaledobjects.yaml

tests/test_helm.py validates the chart's custom resources against these schemas, with unknown
fields refused. To move to another version, run this again on that version's CRD.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml  # type: ignore[import-untyped]


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main(source: str) -> None:
    crd = next(doc for doc in yaml.safe_load_all(sys.stdin) if doc)
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    header = (f"# The openAPIV3Schema of {crd['spec']['names']['kind']} {crd['spec']['group']}/{version['name']},\n"
              f"# from {source} (Apache-2.0), descriptions dropped. Made by scripts/crd_schema.py.\n")
    schema = {"apiVersion": f"{crd['spec']['group']}/{version['name']}", "kind": crd["spec"]["names"]["kind"],
              "source": source, "openAPIV3Schema": strip_descriptions(version["schema"]["openAPIV3Schema"])}
    sys.stdout.write(header + yaml.safe_dump(schema, sort_keys=False))


if __name__ == "__main__":
    main(sys.argv[1])
