#!/usr/bin/env python3
"""Drives `shunt mcp` with the official MCP Python SDK (`pip install mcp`): a real third-party
MCP client, speaking MCP over the server's stdin/stdout. Used by tests/tests/mcp.rs.

usage: mcp_client.py SCENARIO -- SERVER_COMMAND [ARGS...]

SCENARIO is `netns` (no-cluster mode against a netns mini-cluster: frontend -> reviews
(v1 baseline, v2 sandbox pod for key pr-42) -> ratings), `kube` (cluster mode against the fake
API server) or `kube_request` (cluster mode with a real agent: requests from pods) or `loop` (the coding agent's whole loop
with sandboxes of its own builds, no-cluster mode). Prints one JSON object on stdout: every step's result, which the Rust test asserts
on. The client asserts nothing itself beyond what it needs to continue.
"""
import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def call(session, name, args):
    res = await session.call_tool(name, args)
    out = res.structured_content
    if out is None:
        text = "".join(getattr(c, "text", "") for c in res.content)
        out = json.loads(text) if text else None
    return {"is_error": bool(res.is_error), "result": out}


def served_path(body):
    """The pods a demo-app answer went through: ["frontend-v1", "reviews-v2", "ratings-v1"]."""
    path = []
    while isinstance(body, dict) and "pod" in body:
        path.append(body["pod"])
        body = body.get("downstream")
    return path


async def netns(session, out):
    services = await call(session, "list_services", {})
    out["list_services"] = services
    urls = {s["name"]: s["url"] for s in services["result"]["services"]}
    frontend = urls["frontend"]

    # Unkeyed traffic first, by service name: the topology then shows the three tiers.
    unkeyed = []
    for _ in range(3):
        r = await call(session, "send_test_request", {"url": "http://frontend.shop:9080/"})
        unkeyed.append(r)
    out["unkeyed_before"] = unkeyed
    out["unkeyed_before_paths"] = [served_path(r["result"]["response"]["body_json"]) for r in unkeyed]

    out["dependencies_reviews"] = await call(session, "get_dependencies", {"service": "reviews"})
    out["dependencies_all"] = await call(session, "get_dependencies", {})

    out["resolve_port_ok"] = await call(session, "resolve_port", {"service": "reviews", "port": "http"})
    out["resolve_port_wrong"] = await call(session, "resolve_port", {"service": "reviews", "port": 8080})
    out["wrong_port_request"] = await call(
        session, "send_test_request", {"url": "http://reviews:8080/", "key": "pr-42"}
    )

    out["create_bad_selector"] = await call(
        session,
        "create_sandbox_route",
        {"key": "pr-42", "forks": [{"service": "reviews", "selector": {"app": "reviews-v2"}}]},
    )
    fork = {"service": "reviews", "selector": {"app": "reviews-v2", "shunt.dev/sandbox": "pr-42"}}
    out["create"] = await call(session, "create_sandbox_route", {"key": "pr-42", "forks": [fork]})
    out["create_again"] = await call(session, "create_sandbox_route", {"key": "pr-42", "forks": [fork]})
    out["list_routes"] = await call(session, "list_sandbox_routes", {})
    out["list_services_forked"] = await call(session, "list_services", {"namespace": "shop"})

    keyed = await call(session, "send_test_request", {"url": frontend, "key": "pr-42"})
    out["keyed"] = keyed
    out["keyed_path"] = served_path(keyed["result"]["response"]["body_json"])
    plain = await call(session, "send_test_request", {"url": frontend})
    out["unkeyed"] = plain
    out["unkeyed_path"] = served_path(plain["result"]["response"]["body_json"])

    out["decisions"] = await call(
        session,
        "get_decisions",
        {"key": "pr-42", "since_unix_ms": keyed["result"]["started_unix_ms"]},
    )
    out["delete"] = await call(session, "delete_sandbox_route", {"key": "pr-42"})
    out["delete_again"] = await call(session, "delete_sandbox_route", {"key": "pr-42"})
    after = await call(session, "send_test_request", {"url": frontend, "key": "pr-42"})
    out["keyed_after_delete"] = after
    out["keyed_after_delete_path"] = served_path(after["result"]["response"]["body_json"])


async def kube(session, out):
    out["list_services"] = await call(session, "list_services", {})
    out["resolve_port_wrong"] = await call(session, "resolve_port", {"service": "reviews", "port": 8080})
    out["list_routes_before"] = await call(session, "list_sandbox_routes", {})
    fork = {"service": "reviews", "selector": {"app": "reviews-v2", "shunt.dev/sandbox": "pr-42"}}
    out["create"] = await call(
        session, "create_sandbox_route", {"key": "pr-42", "forks": [fork], "ttl": "1h"}
    )
    out["create_again"] = await call(session, "create_sandbox_route", {"key": "pr-42", "forks": [fork]})
    out["create_missing_service"] = await call(
        session,
        "create_sandbox_route",
        {"key": "pr-43", "forks": [{"service": "nope", "selector": {"shunt.dev/sandbox": "x"}}]},
    )
    out["list_routes"] = await call(session, "list_sandbox_routes", {})
    out["list_services_forked"] = await call(session, "list_services", {})
    out["send"] = await call(
        session, "send_test_request", {"url": "http://reviews:9080/", "key": "pr-42"}
    )
    out["dependencies"] = await call(session, "get_dependencies", {"service": "reviews"})
    out["delete"] = await call(session, "delete_sandbox_route", {"key": "pr-42"})
    out["list_routes_after"] = await call(session, "list_sandbox_routes", {})


async def kube_request(session, out):
    """Cluster mode with a real agent: requests sent from pods, hops read through pods/proxy."""
    out["list_services"] = await call(session, "list_services", {})
    fork = {"service": "reviews", "selector": {"shunt.dev/sandbox": "pr-42"}}
    out["create"] = await call(session, "create_sandbox_route", {"key": "pr-42", "forks": [fork]})
    url = "http://reviews.shop.svc.cluster.local:9080/"
    # The credential must reach the service and never the request pod's spec (the Rust test checks).
    keyed = await call(session, "send_test_request", {"url": url, "key": "pr-42",
                                                      "headers": {"authorization": "Bearer s3cr3t-7f3a-do-not-log"}})
    out["keyed"] = keyed
    out["unkeyed"] = await call(session, "send_test_request", {"url": url})
    out["dependencies"] = await call(session, "get_dependencies", {"service": "reviews"})
    since = (keyed.get("result") or {}).get("started_unix_ms")
    args = {"key": "pr-42"}
    if since is not None:
        args["since_unix_ms"] = since
    out["decisions"] = await call(session, "get_decisions", args)
    out["delete"] = await call(session, "delete_sandbox_route", {"key": "pr-42"})


async def kube_bad_image(session, out):
    """Cluster mode: a request pod whose image cannot be pulled."""
    out["send"] = await call(
        session, "send_test_request", {"url": "http://reviews.shop:9080/", "key": "pr-42"}
    )


async def agent_loop(session, out):
    """The coding agent's whole loop against the mini-cluster (no Kubernetes): a broken build of
    reviews as a sandbox, its 500 and log line in the hops, the fixed build, 200, the diff
    against baseline. The session then ends with stdin EOF. Config in SHUNT_LOOP (JSON)."""
    import os
    cfg = json.loads(os.environ["SHUNT_LOOP"])
    app, ratings_url = cfg["demo_app"], cfg["ratings_url"]

    def build(name, fail=None):
        args = ["serve", "--service", "reviews", "--version", "v2", "--pod", name,
                "--listen", "$(POD_IP):$(PORT)", "--call", ratings_url]
        if fail:
            args += ["--fail", fail]
        return args

    # 1. list services
    services = await call(session, "list_services", {})
    out["list_services"] = services
    frontend = {s["name"]: s["url"] for s in services["result"]["services"]}["frontend"]
    # 2. a sandbox of reviews from a build that fails
    out["create_broken"] = await call(session, "create_sandbox", {
        "name": "reviews-broken", "service": "reviews", "key": "pr-42",
        "command": app, "args": build("reviews-broken", "ratings client: nil pointer in stars()")})
    out["get_broken"] = await call(session, "get_sandbox", {"name": "reviews-broken"})
    # 3. a keyed request: the 500 at the sandbox, with its log line
    out["keyed_broken"] = await call(session, "send_test_request", {"url": frontend, "key": "pr-42"})
    out["logs_broken"] = await call(session, "get_logs", {"target": "reviews-broken", "grep": "ERROR"})
    out["logs_broken_since"] = await call(session, "get_logs", {
        "target": "reviews-broken",
        "since_unix_ms": out["keyed_broken"]["result"]["started_unix_ms"]})
    out["logs_baseline"] = await call(session, "get_logs", {"target": "reviews", "tail": 5})
    out["delete_broken"] = await call(session, "delete_sandbox", {"name": "reviews-broken"})
    # 4. the fixed sandbox
    out["create_fixed"] = await call(session, "create_sandbox", {
        "name": "reviews-fixed", "service": "reviews", "key": "pr-42",
        "command": app, "args": build("reviews-fixed")})
    # 5. send again: 200
    out["keyed_fixed"] = await call(session, "send_test_request", {"url": frontend, "key": "pr-42"})
    # 6. the diff against baseline, and an identical pair
    out["compare"] = await call(session, "compare_with_baseline", {
        "url": frontend, "key": "pr-42", "ignore": ["**.baggage"]})
    out["compare_identical"] = await call(session, "compare_with_baseline", {
        "url": frontend, "key": "pr-unforked", "ignore": ["**.baggage"]})
    # What the session keeps, what it may not touch, and its limit.
    out["create_kept"] = await call(session, "create_sandbox", {
        "name": "ratings-kept", "service": "ratings", "key": "pr-kept", "keep": True,
        "command": app, "args": ["serve", "--service", "ratings", "--version", "v2",
                                 "--pod", "ratings-kept", "--listen", "0.0.0.0:$(PORT)"]})
    out["create_route_kept"] = await call(session, "create_sandbox_route", {
        "key": "pr-kept-route", "keep": True,
        "forks": [{"service": "reviews", "selector": {"shunt.dev/sandbox": "nobody"}}]})
    out["create_route_session"] = await call(session, "create_sandbox_route", {
        "key": "pr-session-route",
        "forks": [{"service": "reviews", "selector": {"shunt.dev/sandbox": "nobody"}}]})
    out["create_over_limit"] = await call(session, "create_sandbox", {
        "name": "reviews-third", "service": "reviews", "key": "pr-43",
        "command": app, "args": build("reviews-third")})
    out["delete_persons_route"] = await call(session, "delete_sandbox_route", {"key": "pr-person"})
    out["list_sandboxes"] = await call(session, "list_sandboxes", {})
    out["list_routes"] = await call(session, "list_sandbox_routes", {})
    # 7. the session ends when this client closes stdin.


async def kube_logs(session, out):
    """Cluster mode: get_logs through pods/log."""
    out["pod"] = await call(session, "get_logs", {"target": "reviews-v2-abc", "grep": "ERROR"})
    out["service"] = await call(session, "get_logs", {"target": "reviews", "tail": 1})
    out["sandbox_key"] = await call(session, "get_logs", {"target": "pr-42"})
    out["missing"] = await call(session, "get_logs", {"target": "nope"})
    out["get_sandbox"] = await call(session, "get_sandbox", {"name": "pr-42"})


async def kube_sandbox(session, out):
    """Cluster mode: create_sandbox forks the Deployment (a crash-looping build, then one kept
    past the session), get/list/delete_sandbox; the session then ends with stdin EOF."""
    out["create_no_image"] = await call(
        session, "create_sandbox", {"name": "x", "service": "reviews", "key": "pr-x"}
    )
    out["create_bad"] = await call(session, "create_sandbox", {
        "name": "reviews-bad", "service": "reviews", "key": "pr-bad",
        "image": "reviews:broken", "env": {"STARS": "on"}, "ready_timeout_seconds": 20,
    })
    # Long enough for the session to renew its routes' expiry (--session-ttl 3s: every 1s).
    await asyncio.sleep(1.5)
    out["get_bad"] = await call(session, "get_sandbox", {"name": "pr-bad"})
    out["create_keep"] = await call(session, "create_sandbox", {
        "name": "reviews-keep", "service": "reviews", "key": "pr-keep",
        "image": "reviews:2", "keep": True, "ready_timeout_seconds": 20,
    })
    out["list"] = await call(session, "list_sandboxes", {})
    out["delete_persons"] = await call(session, "delete_sandbox", {"name": "pr-person"})


async def kube_run_tests(session, out):
    """Cluster mode: run_tests as a marked pod (a fake kubelet plays the pod, see
    tests/tests/mcp_kube_run_tests.rs)."""
    cmd = ["sh", "-c", "curl -sf http://frontend.shop:9080/ && pytest -q"]
    out["no_route"] = await call(
        session, "run_tests", {"image": "tests:1", "command": cmd, "key": "pr-9"}
    )
    out["run"] = await call(
        session, "run_tests",
        {"image": "tests:1", "command": cmd, "key": "pr-42", "env": {"CASE": "fails"}},
    )
    out["unmarked"] = await call(
        session, "run_tests",
        {"image": "tests:1", "command": cmd, "key": "pr-42", "env": {"CASE": "unmarked"}},
    )


async def main():
    argv = sys.argv[1:]
    if len(argv) < 3 or argv[1] != "--":
        sys.exit(__doc__)
    scenario, command = argv[0], argv[2:]
    params = StdioServerParameters(command=command[0], args=command[1:])
    out = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            out["server"] = {
                "name": init.server_info.name,
                "protocol_version": str(init.protocol_version),
                "instructions": init.instructions,
            }
            tools = await session.list_tools()
            out["tools"] = {
                t.name: {
                    "description": t.description,
                    "input_schema": t.input_schema,
                    "has_output_schema": t.output_schema is not None,
                }
                for t in tools.tools
            }
            await {"netns": netns, "kube": kube, "kube_request": kube_request,
             "kube_bad_image": kube_bad_image, "loop": agent_loop, "kube_logs": kube_logs,
             "kube_sandbox": kube_sandbox, "kube_run_tests": kube_run_tests}[scenario](session, out)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    asyncio.run(main())
