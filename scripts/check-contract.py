#!/usr/bin/env python3
"""Checks a running batond against api/openapi.yaml.

usage: check-contract.py SPEC BASE_URL TOKEN [fleet]

With `fleet` the batond runs in fleet mode (a `[fleet]` section, etcd
reachable, no plan yet) and the fleet routes are checked with their answers in
fleet mode; without it they are checked answering `fleet_off`.

Calls every route the spec lists (and the error cases it documents), and
validates each answer's status, content type and JSON body against the schema
the spec gives for that status. Prints one line per check and exits non-zero on
the first mismatch. Needs PyYAML and jsonschema (scripts/install-deps.sh).
"""
import hashlib
import json
import sys
import urllib.error
import urllib.request

import jsonschema
import yaml


def fetch(url, token=None, method="GET", body=None):
    data = None if body is None else body.encode()
    request = urllib.request.Request(url, method=method, data=data)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


SCRIPT = "#!/bin/sh\nexec sleep 1000\n"


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def main():
    spec_path, base, token = sys.argv[1:4]
    fleet = sys.argv[4:5] == ["fleet"]
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
        # (method, path template, concrete path, token?, body?, expected status)
        ("get", "/healthz", "/healthz", None, None, 200),
        ("get", "/readyz", "/readyz", None, None, 200),
        ("get", "/metrics", "/metrics", None, None, 200),
        ("get", "/", "/", token, None, 200),
        ("get", "/", "/", None, None, 401),
        ("get", "/ui/login", "/ui/login?code=spent", None, None, 401),
        ("post", "/v1/ui/links", "/v1/ui/links", token, None, 201),
        ("get", "/v1/status", "/v1/status", token, None, 200),
        ("get", "/v1/status", "/v1/status", None, None, 401),
        ("get", "/v1/daemon", "/v1/daemon", token, None, 200),
        ("get", "/v1/daemon", "/v1/daemon", None, None, 401),
        ("put", "/v1/daemon/binary", "/v1/daemon/binary", token, "not a binary", 400),
        ("post", "/v1/daemon/upgrade", "/v1/daemon/upgrade", token, '{"digest":"' + "0" * 64 + '"}', 404),
        ("post", "/v1/daemon/upgrade", "/v1/daemon/upgrade", token, '{"digest":"nope"}', 422),
        ("put", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0", token, "no digest", 400),
        ("put", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0?sha256=" + sha256("plain text"), token,
         "plain text", 415),
        ("put", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0?sha256=" + sha256(SCRIPT), token, SCRIPT, 201),
        ("put", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0?sha256=" + sha256(SCRIPT), token, SCRIPT, 200),
        ("put", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0?sha256=" + sha256("#!/bin/sh\n"), token,
         "#!/bin/sh\n", 409),
        ("put", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.1?sha256=" + sha256("other"), token, SCRIPT, 422),
        ("post", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0", token,
         '{"url":"file:///etc/passwd","sha256":"' + "0" * 64 + '"}', 422),
        ("post", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0", token,
         '{"url":"http://127.0.0.1:9/x","sha256":"' + sha256(SCRIPT) + '"}', 200),
        ("post", "/v1/releases/{agent}/{version}", "/v1/releases/demo/2.0", token,
         '{"url":"http://127.0.0.1:9/x","sha256":"' + "0" * 64 + '"}', 202),
        ("get", "/v1/releases/{agent}", "/v1/releases/demo", token, None, 200),
        ("get", "/v1/releases/{agent}", "/v1/releases/ghost", token, None, 404),
        ("get", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0", token, None, 200),
        ("get", "/v1/releases/{agent}/{version}", "/v1/releases/demo/9.9", token, None, 404),
        ("delete", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0", token, None, 204),
        ("delete", "/v1/releases/{agent}/{version}", "/v1/releases/demo/1.0", token, None, 404),
        ("get", "/v1/version", "/v1/version", token, None, 200),
        ("put", "/v1/version", "/v1/version", token, '{"version":"9.9"}', 404),
        ("put", "/v1/version", "/v1/version", token, '{"version":".."}', 422),
        ("get", "/v1/agents", "/v1/agents", token, None, 200),
        ("get", "/v1/agents", "/v1/agents", "wrong-token", None, 401),
        ("get", "/v1/agents/{name}", "/v1/agents/demo", token, None, 200),
        ("get", "/v1/agents/{name}", "/v1/agents/ghost", token, None, 404),
        ("get", "/v1/agents/{name}", "/v1/agents/NOT_VALID", token, None, 400),
        ("get", "/v1/events", "/v1/events?since=0", token, None, 200),
        ("get", "/v1/events", "/v1/events?since=0&limit=1", token, None, 200),
        ("get", "/v1/events", "/v1/events?since=999999&wait=0.2", token, None, 200),
        ("get", "/v1/events", "/v1/events?since=x", token, None, 400),
        ("get", "/v1/events", "/v1/events?since=0&agent=demo", token, None, 200),
        ("get", "/v1/handoffs", "/v1/handoffs", token, None, 200),
        ("get", "/v1/handoffs", "/v1/handoffs?agent=demo&limit=5", token, None, 200),
        ("get", "/v1/handoffs", "/v1/handoffs?limit=0", token, None, 400),
        ("put", "/v1/agents/{name}/desired", "/v1/agents/demo/desired", token, '{"version":"9.9"}', 404),
        ("put", "/v1/agents/{name}/desired", "/v1/agents/demo/desired", token, '{"version":"../x"}', 422),
        ("put", "/v1/agents/{name}/desired", "/v1/agents/demo/desired", token, '{nope', 400),
        ("put", "/v1/agents/{name}/desired", "/v1/agents/ghost/desired", token, '{"version":"1.0"}', 404),
        ("put", "/v1/agents/{name}/desired", "/v1/agents/demo/desired", None, '{"version":"1.0"}', 401),
        ("post", "/v1/agents/{name}/rollback", "/v1/agents/demo/rollback", token, "{}", 409),
        ("get", "/v1/handoffs/{id}", "/v1/handoffs/demo-99", token, None, 404),
        ("post", "/v1/agents/{name}/instances", "/v1/agents/demo/instances", token, '{"pid":1,"version":"1.0"}', 403),
        ("post", "/v1/agents/{name}/instances", "/v1/agents/demo/instances", token, '{"pid":999999999,"version":"1.0"}', 422),
        ("post", "/v1/instances/{id}/ready", "/v1/instances/demo.1/ready", token, "{}", 403),
        ("post", "/v1/instances/{id}/failed", "/v1/instances/demo.1/failed", token, '{"reason":"x"}', 403),
        ("post", "/v1/instances/{id}/stopped", "/v1/instances/demo.1/stopped", None, "{}", 401),
        ("get", "/v1/instances/{id}/signal", "/v1/instances/demo.1/signal", token, None, 403),
    ]
    source = '{"demo": {"url": "http://127.0.0.1:9/demo.tar.gz", "sha256": "' + "0" * 64 + '"}}'
    if fleet:
        checks += [
            ("get", "/v1/fleet", "/v1/fleet", token, None, 200),
            ("get", "/v1/fleet", "/v1/fleet", None, None, 401),
            ("post", "/v1/fleet/rollback", "/v1/fleet/rollback", token, "{}", 404),
            ("post", "/v1/fleet/exclude", "/v1/fleet/exclude", token, '{"hosts": ["h9"]}', 404),
            ("put", "/v1/fleet", "/v1/fleet", token, '{"version": "1.0", "releases": ' + source + '}', 200),
            ("put", "/v1/fleet", "/v1/fleet", token, '{"version": "2.0", "releases": ' + source + ', "canary": 1, '
             '"max_unavailable": 2, "soak_ms": 1000}', 200),
            ("put", "/v1/fleet", "/v1/fleet", token, '{"version": "3.0", "releases": ' + source + ', "expect_revision": 1}', 409),
            ("put", "/v1/fleet", "/v1/fleet", token, '{"version": "../x", "releases": ' + source + '}', 422),
            ("put", "/v1/fleet", "/v1/fleet", token, '{"version": "3.0", "agents": ["demo"]}', 422),
            ("put", "/v1/fleet", "/v1/fleet", token, '{"version": "3.0", "barrier": true, "canary": 2, "releases": ' + source + '}', 422),
            ("put", "/v1/fleet", "/v1/fleet", token, '{"version": "3.0", "colour": "red"}', 422),
            ("put", "/v1/fleet", "/v1/fleet", token, "{", 400),
            ("post", "/v1/fleet/exclude", "/v1/fleet/exclude", token, '{"hosts": ["h9"]}', 200),
            ("post", "/v1/fleet/exclude", "/v1/fleet/exclude", token, '{"hosts": ["a/b"]}', 422),
            ("post", "/v1/fleet/rollback", "/v1/fleet/rollback", token, '{"expect_revision": 1}', 409),
            ("post", "/v1/fleet/rollback", "/v1/fleet/rollback", token, "{}", 200),
            ("get", "/v1/fleet", "/v1/fleet", token, None, 200),
        ]
    else:
        checks += [
            ("get", "/v1/fleet", "/v1/fleet", token, None, 404),
            ("put", "/v1/fleet", "/v1/fleet", token, '{"version": "2.0"}', 404),
            ("post", "/v1/fleet/rollback", "/v1/fleet/rollback", token, "{}", 404),
            ("post", "/v1/fleet/exclude", "/v1/fleet/exclude", token, '{"hosts": ["h1"]}', 404),
        ]
    seen = set()
    for method, template, path, credential, payload, expected in checks:
        operation = spec["paths"][template][method]
        status, content_type, body = fetch(base + path, credential, method.upper(), payload)
        where = f"{method.upper()} {path} -> {status}"
        if status != expected:
            sys.exit(f"FAIL {where}: expected {expected}: {body[:200]!r}")
        responses = operation["responses"]
        response = resolve(responses.get(str(status)) or responses.get("default"))
        if response is None:
            sys.exit(f"FAIL {where}: the spec lists no {status} for {template}")
        media = response.get("content", {})
        if not media and not body:
            seen.add(template)
            print(f"ok   {where} (no content)")
            continue
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
