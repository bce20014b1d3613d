"""A legacy-era-only MCP server (2025-11-25 sessions, no server/discover), for testing how joch
translates modern-era callers. The servers on PyPI speak both eras, so this one is written here;
the client in the tests is still the official SDK.

Usage: legacy_server.py PORT
"""
import json
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SESSIONS = set()
STREAMS = {}  # session id -> queues of its open GET streams
PENDING = {}  # id of a request to the client -> (answered, [answer])
LOCK = threading.Lock()
TOOLS = [{"name": "announce", "description": "Tell every session's stream that the tool list changed.",
          "inputSchema": {"type": "object", "properties": {}}},
         {"name": "streams", "description": "How many server streams (GET) are open.",
          "inputSchema": {"type": "object", "properties": {}}},
         {"name": "confirm", "description": "Ask the client (elicitation on the call's stream).",
          "inputSchema": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}},
         {"name": "echo", "description": "Echo a text.",
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
         {"name": "slow", "description": "Count to steps, 50 ms each, reporting progress (SSE).",
          "inputSchema": {"type": "object", "properties": {"steps": {"type": "integer"}}, "required": ["steps"]}}]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        method, mid = msg.get("method"), msg.get("id")
        if method == "initialize":
            sid = uuid.uuid4().hex
            SESSIONS.add(sid)
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "legacy", "version": "0.9.0"}}
            return self.answer(200, {"jsonrpc": "2.0", "id": mid, "result": result}, [("mcp-session-id", sid)])
        if method is None and mid in PENDING:
            PENDING[mid][1].append(msg)
            PENDING[mid][0].set()
            return self.answer(202)
        if self.headers.get("mcp-session-id") not in SESSIONS:
            return self.answer(400, {"jsonrpc": "2.0", "id": mid, "error": {"code": -32600, "message": "Bad Request: Missing session ID"}})
        if mid is None:
            return self.answer(202)
        if method == "tools/list":
            return self.answer(200, {"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
        if method == "tools/call" and msg["params"]["name"] == "slow":
            steps = msg["params"]["arguments"]["steps"]
            token = (msg["params"].get("_meta") or {}).get("progressToken")
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
            done = {"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": f"done {steps}"}], "isError": False}}
            self.wfile.write(f"event: message\ndata: {json.dumps(done)}\n\n".encode())
            return
        if method == "tools/call" and msg["params"]["name"] == "confirm":
            rid = "elicit-" + uuid.uuid4().hex
            answered, box = threading.Event(), []
            PENDING[rid] = (answered, box)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            ask = {"jsonrpc": "2.0", "id": rid, "method": "elicitation/create", "params": {
                "message": msg["params"]["arguments"]["question"],
                "requestedSchema": {"type": "object", "properties": {"value": {"type": "boolean"}}}}}
            self.wfile.write(f"event: message\ndata: {json.dumps(ask)}\n\n".encode())
            self.wfile.flush()
            answered.wait(10)
            got = box[0] if box else None
            if got is None:
                text = "no answer"
            elif "error" in got:
                text = "error: " + got["error"]["message"]
            else:
                text = f"{got['result']['action']}:{(got['result'].get('content') or {}).get('value')}"
            done = {"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": text}], "isError": False}}
            self.wfile.write(f"event: message\ndata: {json.dumps(done)}\n\n".encode())
            return
        if method == "tools/call" and msg["params"]["name"] in ("announce", "streams"):
            with LOCK:
                queues = [q for qs in STREAMS.values() for q in qs]
            if msg["params"]["name"] == "announce":
                for q in queues:
                    q.put({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
                text = "announced"
            else:
                text = str(len(queues))
            return self.answer(200, {"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": text}], "isError": False}})
        if method == "tools/call" and msg["params"]["name"] == "echo":
            text = msg["params"]["arguments"]["text"]
            return self.answer(200, {"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": text}], "isError": False}})
        return self.answer(200, {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "Method not found"}})

    def do_GET(self):
        sid = self.headers.get("mcp-session-id")
        if sid not in SESSIONS:
            return self.answer(404, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}})
        q = queue.Queue()
        with LOCK:
            STREAMS.setdefault(sid, []).append(q)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        try:
            while sid in SESSIONS:
                try:
                    msg = q.get(timeout=0.2)
                    self.wfile.write(f"event: message\ndata: {json.dumps(msg)}\n\n".encode())
                except queue.Empty:
                    self.wfile.write(b": ping\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with LOCK:
                STREAMS[sid].remove(q)

    def do_DELETE(self):
        SESSIONS.discard(self.headers.get("mcp-session-id"))
        self.answer(200)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
