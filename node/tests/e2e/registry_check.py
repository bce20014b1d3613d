"""Validates an MCP Registry API answer against the vendored schema (registry/openapi.yaml).

Usage: registry_check.py SCHEMA < answer.json   (SCHEMA: ServerList or ServerResponse)
Prints {"ok": true} or {"ok": false, "errors": [...]}; exits 0 either way.
"""
import datetime
import json
import os
import sys

import jsonschema
import yaml

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "registry", "openapi.yaml")) as f:
    doc = yaml.safe_load(f)
# The whole document is the schema's resource (so #/components/... resolves); the root refers
# to the component asked for. Keywords of OpenAPI that are not JSON Schema are ignored.
schema = dict(doc, **{"$ref": f"#/components/schemas/{sys.argv[1]}"})

checker = jsonschema.FormatChecker()


@checker.checks("date-time", raises=ValueError)
def date_time(value):
    if not isinstance(value, str):
        return True
    if "T" not in value:
        raise ValueError("not an RFC 3339 date-time")
    datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


@checker.checks("uri", raises=ValueError)
def uri(value):
    if isinstance(value, str) and ":" not in value:
        raise ValueError("not a URI")
    return True


validator = jsonschema.Draft202012Validator(schema, format_checker=checker)
answer = json.load(sys.stdin)
errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(answer)]
print(json.dumps({"ok": not errors, "errors": errors}))
