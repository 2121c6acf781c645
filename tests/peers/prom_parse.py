"""Prometheus' own Python client (prometheus-client from PyPI) as the parser of easel's
/metrics: reads the text format on stdin and prints the families as JSON,
{name: {"type", "documentation", "samples": [{"name", "labels", "value"}]}}.
A text the parser refuses exits 1 with its message on stderr."""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    families = {}
    try:
        for family in text_string_to_metric_families(sys.stdin.read()):
            families[family.name] = {
                "type": family.type,
                "documentation": family.documentation,
                "samples": [
                    {
                        "name": s.name,
                        "labels": s.labels,
                        "value": None if math.isinf(s.value) else s.value,
                    }
                    for s in family.samples
                ],
            }
    except Exception as err:  # the parser's refusal is the test's failure
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(families))
    return 0


if __name__ == "__main__":
    sys.exit(main())
