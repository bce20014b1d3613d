"""A stdio MCP server with resource subscriptions (neither fastmcp nor mcp-server-time offers
them), for testing how joch shares one child between sessions: whose subscription an update
reaches, and what the child is told when sessions unsubscribe or end. The clients in the tests
are the official SDK.

Tools: `touch {uri}` sends notifications/resources/updated for the URI if it is subscribed;
`subscriptions` lists the URIs the child itself holds subscribed.

Usage: subscribe_server.py      (JSON-RPC lines on stdin/stdout)
"""
import json
import sys

SUBS = set()
RESOURCES = ["note://a", "note://b"]
TOOLS = [{"name": "touch", "description": "Change a resource (notifies its subscribers).",
          "inputSchema": {"type": "object", "properties": {"uri": {"type": "string"}}, "required": ["uri"]}},
         {"name": "subscriptions", "description": "The URIs subscribed at this server.",
          "inputSchema": {"type": "object", "properties": {}}}]


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def text(mid, t):
    send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": t}], "isError": False}})


for line in sys.stdin:
    msg = json.loads(line)
    method, mid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if mid is None or method is None:
        continue
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"resources": {"subscribe": True}, "tools": {}},
            "serverInfo": {"name": "notes", "version": "1.0.0"}}})
    elif method == "resources/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"resources": [{"uri": u, "name": u} for u in RESOURCES]}})
    elif method == "resources/subscribe":
        SUBS.add(params["uri"])
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
    elif method == "resources/unsubscribe":
        SUBS.discard(params["uri"])
        send({"jsonrpc": "2.0", "id": mid, "result": {}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
    elif method == "tools/call" and params["name"] == "touch":
        uri = params["arguments"]["uri"]
        if uri in SUBS:
            send({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}})
        text(mid, "touched")
    elif method == "tools/call" and params["name"] == "subscriptions":
        text(mid, ",".join(sorted(SUBS)))
    else:
        send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "Method not found"}})
