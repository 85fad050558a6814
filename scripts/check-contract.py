#!/usr/bin/env python3
"""Checks a running batond against api/openapi.yaml.

usage: check-contract.py SPEC BASE_URL TOKEN

Calls every route the spec lists (and the error cases it documents), and
validates each answer's status, content type and JSON body against the schema
the spec gives for that status. Prints one line per check and exits non-zero on
the first mismatch. Needs PyYAML and jsonschema (scripts/install-deps.sh).
"""
import json
import sys
import urllib.error
import urllib.request

import jsonschema
import yaml


def fetch(url, token=None, method="GET"):
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def main():
    spec_path, base, token = sys.argv[1:4]
    with open(spec_path) as handle:
        spec = yaml.safe_load(handle)
    components = spec["components"]

    def resolve(node):
        while isinstance(node, dict) and "$ref" in node:
            target = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = target
        return node

    checks = [
        # (path template, concrete path, token?, expected status)
        ("/healthz", "/healthz", None, 200),
        ("/readyz", "/readyz", None, 200),
        ("/metrics", "/metrics", None, 200),
        ("/v1/status", "/v1/status", token, 200),
        ("/v1/status", "/v1/status", None, 401),
        ("/v1/agents", "/v1/agents", token, 200),
        ("/v1/agents", "/v1/agents", "wrong-token", 401),
        ("/v1/agents/{name}", "/v1/agents/demo", token, 200),
        ("/v1/agents/{name}", "/v1/agents/ghost", token, 404),
        ("/v1/agents/{name}", "/v1/agents/NOT_VALID", token, 400),
        ("/v1/events", "/v1/events?since=0", token, 200),
        ("/v1/events", "/v1/events?since=0&limit=1", token, 200),
        ("/v1/events", "/v1/events?since=999999&wait=0.2", token, 200),
        ("/v1/events", "/v1/events?since=x", token, 400),
    ]
    seen = set()
    for template, path, credential, expected in checks:
        operation = spec["paths"][template]["get"]
        status, content_type, body = fetch(base + path, credential)
        where = f"GET {path} -> {status}"
        if status != expected:
            sys.exit(f"FAIL {where}: expected {expected}: {body[:200]!r}")
        responses = operation["responses"]
        response = resolve(responses.get(str(status)) or responses.get("default"))
        if response is None:
            sys.exit(f"FAIL {where}: the spec lists no {status} for {template}")
        media = response.get("content", {})
        declared = next((m for m in media if content_type.split(";")[0].strip() == m.split(";")[0].strip()), None)
        if declared is None:
            sys.exit(f"FAIL {where}: content type {content_type!r} is not one of {list(media)}")
        schema = media[declared].get("schema")
        if declared.startswith("application/json") and schema is not None:
            document = json.loads(body)
            jsonschema.validate(document, {**schema, "components": components},
                                cls=jsonschema.Draft202012Validator,
                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        seen.add(template)
        print(f"ok   {where} ({declared})")
    missing = set(spec["paths"]) - seen
    if missing:
        sys.exit(f"FAIL routes in the spec that were not checked: {sorted(missing)}")
    print(f"{len(checks)} passed, 0 failed")


if __name__ == "__main__":
    main()
