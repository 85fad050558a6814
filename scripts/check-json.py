#!/usr/bin/env python3
"""Validates JSON documents against a schema of api/openapi.yaml.

usage: check-json.py SPEC FILE

FILE holds one check per line: a schema name (from components.schemas), a tab,
then one JSON document on the line. Prints each failure and exits non-zero when
any document does not validate. The same validator as check-contract.py
(JSON Schema 2020-12, with the spec's components for $ref); needs PyYAML and
jsonschema (scripts/install-deps.sh).
"""
import json
import sys

import jsonschema
import yaml


def main():
    spec_path, checks_path = sys.argv[1:3]
    with open(spec_path) as handle:
        spec = yaml.safe_load(handle)
    components = spec["components"]
    failures = 0
    count = 0
    with open(checks_path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            name, _, text = line.rstrip("\n").partition("\t")
            count += 1
            if name not in components["schemas"]:
                failures += 1
                print(f"line {number}: api/openapi.yaml has no schema {name}")
                continue
            try:
                document = json.loads(text)
                schema = {"$ref": f"#/components/schemas/{name}", "components": components}
                jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator,
                                    format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
            except (ValueError, jsonschema.ValidationError) as error:
                failures += 1
                message = error.message if isinstance(error, jsonschema.ValidationError) else str(error)
                print(f"line {number} ({name}): {message[:300]}\n  {text[:300]}")
    print(f"{count - failures} valid, {failures} invalid")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
