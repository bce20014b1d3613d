"""A modern-era-only MCP server (2026-07-28, stateless; rejects initialize), for testing how joch
lets legacy-era callers reach such servers. PyPI's servers speak both eras, so this one is
written here; the client in the tests is still the official SDK.

It checks the envelope and the routing headers the way the SDK server does, so a request joch
forwards without them fails here.

Usage: modern_only_server.py PORT
"""
import json
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

V = "2026-07-28"
INFO = {"name": "modern-only", "version": "3.0.0"}
LISTENERS = []  # queues of open subscriptions/listen streams
LOCK = threading.Lock()
TOOLS = [{"name": "announce", "description": "Tell every listener that the tool list changed.",
          "inputSchema": {"type": "object", "properties": {}}},
         {"name": "streams", "description": "How many subscriptions/listen streams are open.",
          "inputSchema": {"type": "object", "properties": {}}},
         {"name": "confirm", "description": "Ask the client (an input_required result, then the retry).",
          "inputSchema": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}},
         {"name": "shout", "description": "Upper-case a text.",
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
         {"name": "slow", "description": "Count to steps, 50 ms each, reporting progress (SSE).",
          "inputSchema": {"type": "object", "properties": {"steps": {"type": "integer"}}, "required": ["steps"]}}]


def result(mid, body, cacheable=False):
    body = dict(body, resultType="complete", _meta={"io.modelcontextprotocol/serverInfo": INFO})
    if cacheable:
        body.update(ttlMs=0, cacheScope="public")
    return {"jsonrpc": "2.0", "id": mid, "result": body}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, mid, code, message, data=None):
        err = {"code": code, "message": message}
        if data is not None:
            err["data"] = data
        self.answer(status, {"jsonrpc": "2.0", "id": mid, "error": err})

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        method, mid = msg.get("method"), msg.get("id")
        meta = (msg.get("params") or {}).get("_meta") or {}
        version = meta.get("io.modelcontextprotocol/protocolVersion")
        if method == "initialize" or version != V or self.headers.get("mcp-protocol-version") != V:
            return self.error(400, mid, -32022, "Unsupported protocol version", {"supported": [V], "requested": version})
        if self.headers.get("mcp-method") != method:
            return self.error(400, mid, -32020, "mcp-method header does not match the request body's method")
        if mid is None:
            return self.answer(202)
        if method == "subscriptions/listen":
            return self.listen(mid, msg["params"].get("notifications") or {})
        if method == "tools/call" and msg["params"]["name"] == "confirm":
            responses = msg["params"].get("inputResponses")
            if not responses:
                ask = {"method": "elicitation/create", "params": {
                    "message": msg["params"]["arguments"]["question"],
                    "requestedSchema": {"type": "object", "properties": {"value": {"type": "boolean"}}}}}
                return self.answer(200, {"jsonrpc": "2.0", "id": mid, "result": {
                    "resultType": "input_required", "inputRequests": {"ok": ask}, "requestState": "asked",
                    "_meta": {"io.modelcontextprotocol/serverInfo": INFO}}})
            got = responses["ok"]
            text = f"{got['action']}:{(got.get('content') or {}).get('value')}"
            return self.answer(200, result(mid, {"content": [{"type": "text", "text": text}], "isError": False}))
        if method == "tools/call" and msg["params"]["name"] in ("announce", "streams"):
            with LOCK:
                listeners = list(LISTENERS)
            if msg["params"]["name"] == "announce":
                for q in listeners:
                    q.put("notifications/tools/list_changed")
                text = "announced"
            else:
                text = str(len(listeners))
            return self.answer(200, result(mid, {"content": [{"type": "text", "text": text}], "isError": False}))
        if method == "server/discover":
            return self.answer(200, result(mid, {"supportedVersions": [V], "capabilities": {"tools": {}}}, True))
        if method == "tools/list":
            return self.answer(200, result(mid, {"tools": TOOLS}, True))
        if method == "tools/call":
            if self.headers.get("mcp-name") != msg["params"]["name"]:
                return self.error(400, mid, -32020, "mcp-name header does not match the request body's 'name' parameter")
            if msg["params"]["name"] == "slow":
                steps = msg["params"]["arguments"]["steps"]
                token = meta.get("progressToken")
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for i in range(steps):
                    if token is not None:
                        note = {"jsonrpc": "2.0", "method": "notifications/progress",
                                "params": {"progressToken": token, "progress": i + 1, "total": steps}}
                        self.wfile.write(f"event: message\ndata: {json.dumps(note)}\n\n".encode())
                        self.wfile.flush()
                    time.sleep(0.05)
                done = result(mid, {"content": [{"type": "text", "text": f"done {steps}"}], "isError": False})
                self.wfile.write(f"event: message\ndata: {json.dumps(done)}\n\n".encode())
                return
            text = msg["params"]["arguments"]["text"].upper()
            return self.answer(200, result(mid, {"content": [{"type": "text", "text": text}], "isError": False}))
        return self.error(404, mid, -32601, "Method not found")

    def listen(self, mid, wanted):
        """One subscriptions/listen stream: the acknowledgement, then the list changes asked for."""
        sub = {"io.modelcontextprotocol/subscriptionId": mid}
        honored = {k: True for k in ("toolsListChanged", "promptsListChanged", "resourcesListChanged") if wanted.get(k)}
        q = queue.Queue()
        with LOCK:
            LISTENERS.append(q)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
               "params": {"notifications": honored, "_meta": sub}}
        try:
            self.wfile.write(f"event: message\ndata: {json.dumps(ack)}\n\n".encode())
            self.wfile.flush()
            while True:
                try:
                    method = q.get(timeout=0.2)
                    if wanted.get("toolsListChanged"):
                        note = {"jsonrpc": "2.0", "method": method, "params": {"_meta": sub}}
                        self.wfile.write(f"event: message\ndata: {json.dumps(note)}\n\n".encode())
                except queue.Empty:
                    self.wfile.write(b": ping\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with LOCK:
                LISTENERS.remove(q)

    def do_GET(self):
        self.send_response(405)
        self.send_header("allow", "POST")
        self.end_headers()


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
