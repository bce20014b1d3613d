"""A stdio MCP server that misbehaves in the ways joch must survive without a panic or a hang.

Usage: odd_stdio_server.py odd-init   (answers initialize with a result that is not an object)
       odd_stdio_server.py noisy      (before each answer: a line far over joch's 16 MiB limit,
                                       a non-object message, notifications whose params and
                                       _meta are not objects; then a correct answer)
"""
import json
import sys

MODE = sys.argv[1]


def send(msg):
    sys.stdout.write((msg if isinstance(msg, str) else json.dumps(msg)) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if not isinstance(msg, dict) or "id" not in msg:
        continue
    mid, method = msg["id"], msg.get("method")
    if method == "initialize":
        if MODE == "odd-init":
            send({"jsonrpc": "2.0", "id": mid, "result": 42})
        else:
            send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": "2025-11-25",
                  "capabilities": {"tools": {"listChanged": True}}, "serverInfo": {"name": "noisy", "version": "0.1"}}})
        continue
    if method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}})
        continue
    if method == "tools/call":
        send("x" * (17 << 20))
        send("[1, 2, 3]")
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {"_meta": 5}})
        send({"jsonrpc": "2.0", "method": "notifications/progress", "params": 7})
        send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "still here"}]}})
        continue
    send({"jsonrpc": "2.0", "id": mid, "result": {}})
