#!/usr/bin/env python3
"""Parses Prometheus text exposition (stdin) with the reference parser
(prometheus_client) and prints the samples as JSON lines:
{"name": ..., "labels": {...}, "value": ..., "type": ...}. A malformed
exposition raises, so the caller sees the parser's error."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type}))
