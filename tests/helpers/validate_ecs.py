#!/usr/bin/env python3
"""Validates ECS events (JSON lines on stdin) against the published ECS field
definitions (`ecs_flat.yml` of ECS 8.11, as JSON: argv[1]). Prints one line per
event: `ok` or `invalid: ...`.

Every field must be an ECS field of a compatible type, except under the
producer's own namespace (argv[2], e.g. `ollama_warden`), where ECS puts custom
fields; event.kind/category/type/outcome must use allowed values, and each
event.type must be one the event.category expects."""
import ipaddress
import json
import re
import sys

defs = json.load(open(sys.argv[1]))
fields, custom = defs["fields"], sys.argv[2]
allowed = {k: {v["name"]: v for v in f.get("allowed_values", [])} for k, f in fields.items()}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def leaves(obj, prefix=""):
    for k, v in obj.items():
        name = prefix + k
        if isinstance(v, dict) and (name not in fields or fields[name]["type"] not in ("object", "flattened")):
            yield from leaves(v, name + ".")
        else:
            yield name, v


def type_ok(ty, v):
    if ty in ("keyword", "constant_keyword", "wildcard", "match_only_text", "text"):
        return isinstance(v, str)
    if ty in ("long", "integer", "short", "byte", "unsigned_long"):
        return isinstance(v, int) and not isinstance(v, bool)
    if ty in ("float", "scaled_float", "double", "half_float"):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if ty == "boolean":
        return isinstance(v, bool)
    if ty == "date":
        return isinstance(v, str) and RFC3339.match(v) is not None
    if ty == "ip":
        try:
            ipaddress.ip_address(v)
            return True
        except ValueError:
            return False
    if ty in ("object", "flattened", "nested"):
        return isinstance(v, (dict, list))
    return False


def problems(event):
    for name, value in leaves(event):
        if name == custom or name.startswith(custom + "."):
            continue
        f = fields.get(name)
        if f is None:
            yield "%s: not an ECS %s field" % (name, defs["ecs_version"])
            continue
        values = value if isinstance(value, list) and "array" in f.get("normalize", []) else [value]
        if isinstance(value, list) and "array" not in f.get("normalize", []) and f["type"] not in ("object", "flattened", "nested"):
            yield "%s: a list where ECS expects one value" % name
            continue
        for v in values:
            if not type_ok(f["type"], v):
                yield "%s: %r is not of ECS type %s" % (name, v, f["type"])
            elif allowed.get(name) and v not in allowed[name]:
                yield "%s: %r is not an allowed value" % (name, v)
    ev = event.get("event", {})
    for cat in ev.get("category", []):
        expected = allowed["event.category"].get(cat, {}).get("expected_event_types", [])
        for t in ev.get("type", []):
            if t not in expected:
                yield "event.type %r is not expected with event.category %r" % (t, cat)


for line in sys.stdin:
    if line.strip():
        found = list(problems(json.loads(line)))
        print("invalid: " + "; ".join(found) if found else "ok")
