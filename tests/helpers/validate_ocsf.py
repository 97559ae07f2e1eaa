#!/usr/bin/env python3
"""Validates OCSF events (JSON lines on stdin) against the published OCSF JSON
schema of their class and version (PyPI `ocsf-json-schema`, draft 2020-12 via
`jsonschema`). Prints one line per event: `ok CLASS_UID` or `invalid: ...`."""
import json
import sys

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

schemas = {}
for line in sys.stdin:
    if not line.strip():
        continue
    event = json.loads(line)
    version, class_uid = event["metadata"]["version"], event["class_uid"]
    # Validated with the profiles the event declares, as OCSF consumers do.
    profiles = tuple(sorted(event["metadata"].get("profiles", [])))
    key = (version, class_uid, profiles)
    if key not in schemas:
        ocsf = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
        schema = ocsf.get_class_schema(ocsf.lookup_class_name_from_uid(class_uid), profiles=list(profiles))
        schemas[key] = jsonschema.Draft202012Validator(schema)
    errors = sorted(schemas[key].iter_errors(event), key=lambda e: list(e.path))
    if errors:
        print("invalid: " + "; ".join("%s: %s" % ("/".join(map(str, e.path)), e.message) for e in errors))
    else:
        print("ok %d" % class_uid)
