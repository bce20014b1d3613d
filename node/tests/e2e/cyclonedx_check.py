"""Validates a CycloneDX BOM (JSON, on stdin) against the CycloneDX 1.6 JSON schema with
CycloneDX's own library (cyclonedx-python-lib, strict: no properties beyond the schema's).
Prints "valid" and exits 0, or prints the first problem and exits 1."""
import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

problem = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sys.stdin.read())
if problem is not None:
    print(problem)
    sys.exit(1)
print("valid")
