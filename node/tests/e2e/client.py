"""The official MCP Python SDK client, driven through joch, for joch's end-to-end tests.

Every scenario prints one JSON object on stdout. Requests are spread over the given node URLs by
a round-robin transport: a plain, non-sticky load balancer in front of the cluster.

Usage:
  client.py walkthrough SERVER NODE_URL...
  client.py quarantine JOCH ADMIN_URL SERVER NODE_URL...
  client.py pin JOCH ADMIN_URL SERVER VERSION NODE_URL...
  client.py stdio SERVER NODE_URL...        (mcp-server-time behind joch)
  client.py aggregate JOCH ADMIN_URL NODE_URL...   (/mcp over every server)
  client.py era SERVER NODE_URL...          (which era the SDK negotiated; a call and a list)
  client.py progress SERVER NODE_URL...     (do progress notifications arrive while the call runs?)
  client.py resume SERVER NODE_URL...       (a call whose stream the server closes halfway: the SDK
                                             resumes it with GET + Last-Event-ID, on another node)
  client.py listen SERVER NODE_URL           (modern era: subscriptions/listen, then a list change)
  client.py aggregate_notify NODE_URL...    (/mcp, legacy: members' own notifications on one stream)
  client.py subscribe SERVER NODE_URL       (two sessions share a stdio child: resource updates
                                             reach subscribers only; the child hears the last
                                             unsubscribe)
  client.py elicit SERVER|@SERVER NODE_URL... (a tool that asks the client: elicitation through
                                             /mcp/SERVER, or through /mcp with @SERVER)
  client.py aggregate_listen NODE_URL       (modern era: subscriptions/listen on /mcp, members merged)
  client.py notify SERVER NODE_URL...       (a server's own notification on the session's GET stream)
  client.py replay SERVER NODE_URL...       (raw HTTP: a GET stream, then Last-Event-ID after a break)
  client.py probe SERVER|- CALLS_JSON NODE_URL...  (what the caller is shown and may do: the tool,
                                             prompt and resource lists, then each call of
                                             CALLS_JSON [[tool, args], ...], its text or its error;
                                             `-` is the aggregate /mcp)
"""
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time

import httpx2
import mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def agent_headers():
    """The agent's credential (JOCH_AGENT_TOKEN): joch authenticates every agent."""
    token = os.environ.get("JOCH_AGENT_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if os.environ.get("JOCH_PREFER"):
        headers["Prefer"] = os.environ["JOCH_PREFER"]
    if os.environ.get("JOCH_TRACEPARENT"):
        # W3C trace context, as an instrumented agent sends it on every request.
        headers["traceparent"] = os.environ["JOCH_TRACEPARENT"]
    return headers


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next node, keeping the path: no stickiness at all."""

    def __init__(self, bases):
        self.bases = itertools.cycle([httpx2.URL(b) for b in bases])
        self.inner = httpx2.AsyncHTTPTransport()
        self.log = []
        self.answered = []

    async def handle_async_request(self, request):
        base = next(self.bases)
        request.url = request.url.copy_with(host=base.host, port=base.port)
        self.log.append({"method": request.method, "port": base.port})
        response = await self.inner.handle_async_request(request)
        self.answered.append((request.method, response.status_code))
        return response

    async def stream_open(self):
        """Waits until a GET (the session's stream) has been answered 200: from then on the
        server's own messages for the session reach the client."""
        for _ in range(100):
            if ("GET", 200) in self.answered:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the session's stream did not open: {self.answered}")

    async def aclose(self):
        await self.inner.aclose()


def connect(server, bases, rr=None):
    """A client for /mcp/SERVER, or for the aggregate /mcp when server is None."""
    rr = rr or RoundRobin(bases)
    http = httpx2.AsyncClient(transport=rr, timeout=httpx2.Timeout(30.0, read=60.0), headers=agent_headers())
    url = f"{bases[0]}/mcp/{server}" if server else f"{bases[0]}/mcp"
    # MCP_MODE=legacy forces the initialize handshake (sessions); the default negotiates.
    mode = os.environ.get("MCP_MODE", "auto")
    return Client(streamable_http_client(url, http_client=http), mode=mode), rr


def err(e):
    return {"code": e.code, "message": e.error.message, "data": e.error.data}


def find_mcp_error(e):
    """The MCPError inside an exception group (the SDK wraps connect-time errors), or None."""
    if isinstance(e, MCPError):
        return e
    for inner in getattr(e, "exceptions", ()):
        found = find_mcp_error(inner)
        if found is not None:
            return found
    return None


async def upstream_has(tool, timeout=30.0):
    """Waits until the upstream (a recording fastmcp_server.py) has started a call of `tool`."""
    path = os.environ["JOCH_RECORD"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if any(json.loads(line)["tool"] == tool for line in f if line.strip()):
                    return
        except FileNotFoundError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the upstream never received a {tool} call")


def joch(binary, admin, *args):
    t = time.monotonic()
    out = subprocess.run([binary, "--server", admin, *args], capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t


async def walkthrough(server, bases):
    client, rr = connect(server, bases)
    progress = []

    async def on_progress(p, total, message):
        progress.append([p, total])

    async with client:
        tools = await client.list_tools()
        add = await client.call_tool("add", {"a": 1, "b": 2})
        slow = await client.call_tool("slow", {"steps": 5}, progress_callback=on_progress)
        resources = await client.list_resources()
        read = await client.read_resource("data://greeting")
        prompts = await client.list_prompts()
        prompt = await client.get_prompt("review", {"code": "x = 1"})
        protocol_version = client.session.protocol_version
    return {
        "tools": sorted(t.name for t in tools.tools),
        "add": add.content[0].text,
        "slow": slow.content[0].text,
        "progress": progress,
        "resources": [str(r.uri) for r in resources.resources],
        "read": read.contents[0].text,
        "prompts": [p.name for p in prompts.prompts],
        "prompt": prompt.messages[0].content.text,
        "ports": sorted({e["port"] for e in rr.log}),
        "requests": len(rr.log),
        "protocol_version": protocol_version,
    }


async def quarantine(binary, admin, server, bases):
    client, rr = connect(server, bases)
    out = {}
    async with client:
        out["before"] = (await client.call_tool("add", {"a": 2, "b": 2})).content[0].text
        started = time.monotonic()
        slow = asyncio.create_task(client.call_tool("slow", {"steps": 400}))
        # Quarantine only once the upstream has the call: the cut of a call in flight is what is
        # tested, not a denial at admission (JOCH_RECORD is the file the upstream records in).
        await upstream_has("slow")
        code, text, took = joch(binary, admin, "mcp", "quarantine", server, "--reason", "e2e: drift")
        acked = time.monotonic()
        out["quarantine_exit"] = code
        out["quarantine_output"] = text
        try:
            r = await slow
            out["slow"] = {"finished": r.content[0].text}
        except MCPError as e:
            out["slow"] = {"error": err(e), "ended_after_ack_s": time.monotonic() - acked, "ran_s": time.monotonic() - started}
        calls = []
        for _ in range(len(bases)):
            try:
                r = await client.call_tool("add", {"a": 1, "b": 1})
                calls.append({"ok": r.content[0].text, "port": rr.log[-1]["port"]})
            except MCPError as e:
                calls.append({"error": err(e), "port": rr.log[-1]["port"]})
        out["after"] = calls
    return out


async def pin(binary, admin, server, wrong, bases):
    out = {}
    client, _ = connect(server, bases)
    async with client:
        out["before"] = (await client.call_tool("add", {"a": 3, "b": 4})).content[0].text
        out["pin_wrong"] = joch(binary, admin, "mcp", "pin", server, "--to", wrong)[0]
        try:
            await client.call_tool("add", {"a": 1, "b": 1})
            out["existing_session"] = "allowed"
        except MCPError as e:
            out["existing_session"] = err(e)
    fresh, _ = connect(server, bases)
    try:
        async with fresh:
            out["new_session"] = "allowed"
    except Exception as e:  # the SDK wraps errors raised while connecting in exception groups
        found = find_mcp_error(e)
        out["new_session"] = err(found) if found else {"exception": repr(e)}
    out["pin_right"] = joch(binary, admin, "mcp", "pin", server, "--to", "1.4.2")[0]
    again, _ = connect(server, bases)
    async with again:
        out["after_fix"] = (await again.call_tool("add", {"a": 5, "b": 5})).content[0].text
    return out


async def stdio(server, bases):
    client, rr = connect(server, bases)
    async with client:
        tools = await client.list_tools()
        zones = []
        for _ in range(len(bases)):
            r = await client.call_tool("get_current_time", {"timezone": "UTC"})
            zones.append(json.loads(r.content[0].text)["timezone"])
        conv = await client.call_tool("convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"})
        protocol_version = client.session.protocol_version
    return {
        "protocol_version": protocol_version,
        "tools": sorted(t.name for t in tools.tools),
        "zones": zones,
        "tokyo": json.loads(conv.content[0].text)["target"]["datetime"][11:16],
        "ports": sorted({e["port"] for e in rr.log}),
    }


async def aggregate(binary, admin, bases):
    client, rr = connect(None, bases)
    out = {}
    async with client:
        out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
        out["add"] = (await client.call_tool("heldout.add", {"a": 20, "b": 22})).content[0].text
        progress = []

        async def on_progress(p, total, message):
            progress.append([p, total])

        slow = await client.call_tool("heldout.slow", {"steps": 3}, progress_callback=on_progress)
        out["slow"] = slow.content[0].text
        out["progress"] = progress
        t = await client.call_tool("time.get_current_time", {"timezone": "UTC"})
        out["time"] = json.loads(t.content[0].text)["timezone"]
        out["prompts"] = sorted(p.name for p in (await client.list_prompts()).prompts)
        out["prompt"] = (await client.get_prompt("heldout.review", {"code": "y"})).messages[0].content.text
        resources = (await client.list_resources()).resources
        out["resources"] = [str(r.uri) for r in resources]
        out["read"] = (await client.read_resource(resources[0].uri)).contents[0].text
        out["quarantine_exit"] = joch(binary, admin, "mcp", "quarantine", "heldout", "--reason", "agg")[0]
        out["tools_after"] = sorted(t.name for t in (await client.list_tools()).tools)
        try:
            await client.call_tool("heldout.add", {"a": 1, "b": 1})
            out["add_after"] = "allowed"
        except MCPError as e:
            out["add_after"] = err(e)
        t = await client.call_tool("time.get_current_time", {"timezone": "UTC"})
        out["time_after"] = json.loads(t.content[0].text)["timezone"]
        out["protocol_version"] = client.session.protocol_version
    out["ports"] = sorted({e["port"] for e in rr.log})
    return out


async def era(server, bases):
    client, rr = connect(server, bases)
    async with client:
        tools = await client.list_tools()
        name = next(n for n in ("add", "echo", "shout") if n in {t.name for t in tools.tools})
        args = {"text": "hi"} if name in ("echo", "shout") else {"a": 1, "b": 2}
        r = await client.call_tool(name, args)
        return {
            "protocol_version": client.session.protocol_version,
            "modern": client.session.discover_result is not None,
            "server_version": (client.session.discover_result.meta or {}).get("io.modelcontextprotocol/serverInfo", {}).get("version")
            if client.session.discover_result else client.session.initialize_result.server_info.version,
            "tools": sorted(t.name for t in tools.tools),
            "call": r.content[0].text,
            "ports": sorted({e["port"] for e in rr.log}),
        }


async def progress(server, bases):
    client, rr = connect(server, bases)
    calls = []
    async with client:
        for _ in range(2):
            seen = []

            async def on_progress(p, total, message, seen=seen):
                seen.append(time.monotonic())

            start = time.monotonic()
            r = await client.call_tool("slow", {"steps": 10}, progress_callback=on_progress)
            end = time.monotonic()
            calls.append({"result": r.content[0].text, "events": len(seen),
                          "first_event_after_s": (seen[0] - start) if seen else None,
                          "first_event_before_end_s": (end - seen[0]) if seen else None})
        protocol_version = client.session.protocol_version
    return {"protocol_version": protocol_version, "calls": calls, "ports": sorted({e["port"] for e in rr.log})}


async def resume(server, bases):
    client, rr = connect(server, bases)
    progress = []

    async def on_progress(p, total, message):
        progress.append(p)

    async with client:
        r = await client.call_tool("resumable", {"steps": 10}, progress_callback=on_progress)
        protocol_version = client.session.protocol_version
    return {"protocol_version": protocol_version, "result": r.content[0].text, "progress": progress,
            "requests": rr.log}


async def listen(server, bases):
    client, _ = connect(server, bases)
    out = {}
    async with client:
        out["protocol_version"] = client.session.protocol_version
        async with client.listen(tools_list_changed=True, prompts_list_changed=True) as sub:
            out["honored"] = sub.honored.model_dump(by_alias=True, exclude_none=True)
            out["subscription_id"] = sub.subscription_id
            out["announce"] = (await client.call_tool("announce", {})).content[0].text
            event = await asyncio.wait_for(sub.__anext__(), 10)
            out["event"] = type(event).__name__
        if "streams" in {t.name for t in (await client.list_tools()).tools}:
            # The listen stream is closed: joch must close what it opened for it upstream.
            for _ in range(50):
                out["upstream_streams_after"] = (await client.call_tool("streams", {})).content[0].text
                if out["upstream_streams_after"] == "0":
                    break
                await asyncio.sleep(0.1)
    return out


async def aggregate_notify(bases):
    """The aggregate session's stream merges the members' own notifications: an announcement
    by each member arrives, whichever nodes the requests land on."""
    seen = []

    async def on_message(m):
        if getattr(m, "method", None) == "notifications/tools/list_changed":
            seen.append(time.monotonic())

    rr = RoundRobin(bases)
    http = httpx2.AsyncClient(transport=rr, timeout=httpx2.Timeout(30.0, read=60.0), headers=agent_headers())
    client = Client(streamable_http_client(f"{bases[0]}/mcp", http_client=http), mode="legacy",
                    message_handler=on_message)
    out = {}
    async with client:
        await rr.stream_open()  # the SDK opens it in the background after initialize
        tools = {t.name for t in (await client.list_tools()).tools}
        for name in sorted(t for t in tools if t.endswith(".announce")):
            before = len(seen)
            out[name] = (await client.call_tool(name, {})).content[0].text
            for _ in range(100):
                if len(seen) > before:
                    break
                await asyncio.sleep(0.1)
            out[name + " seen"] = len(seen) - before
    out["methods"] = sorted({e["method"] for e in rr.log})
    return out


async def subscribe(server, bases):
    updates = {"a": [], "b": []}

    def recorder(who):
        async def on_message(m):
            if getattr(m, "method", None) == "notifications/resources/updated":
                updates[who].append(str(m.params.uri))
        return on_message

    transports = {"a": RoundRobin(bases), "b": RoundRobin(bases)}

    def session(who):
        http = httpx2.AsyncClient(transport=transports[who], timeout=httpx2.Timeout(30.0, read=60.0),
                              headers=agent_headers())
        return Client(streamable_http_client(f"{bases[0]}/mcp/{server}", http_client=http), mode="legacy",
                      message_handler=recorder(who))

    async def until(cond):
        for _ in range(50):
            if cond():
                return True
            await asyncio.sleep(0.1)
        return False

    text = lambda r: r.content[0].text
    out = {}
    async with session("a") as a:
        async with session("b") as b:
            await transports["a"].stream_open()
            await transports["b"].stream_open()
            await a.subscribe_resource("note://a")
            await b.subscribe_resource("note://a")
            await b.subscribe_resource("note://b")
            await a.call_tool("touch", {"uri": "note://b"})
            out["b_got_b"] = await until(lambda: "note://b" in updates["b"])
            await a.call_tool("touch", {"uri": "note://a"})
            out["both_got_a"] = await until(lambda: "note://a" in updates["a"] and "note://a" in updates["b"])
            # a's stream is ordered: had note://b (sent first) been routed to a, it would have
            # arrived before note://a. No waiting for something not to happen.
            out["a_got_b"] = "note://b" in updates["a"]
            await a.unsubscribe_resource("note://a")
            out["child_after_a_unsubscribed"] = text(await a.call_tool("subscriptions", {}))
        # b ended its session (DELETE): nobody subscribes to anything any more.
        for _ in range(50):
            out["child_after_b_ended"] = text(await a.call_tool("subscriptions", {}))
            if out["child_after_b_ended"] == "":
                break
            await asyncio.sleep(0.1)
    return out


async def elicit(target, bases):
    """TARGET is SERVER (its endpoint /mcp/SERVER) or @SERVER (its tool through the aggregate /mcp)."""
    asked = []

    async def on_elicit(context, params):
        asked.append(params.message)
        return mcp_types.ElicitResult(action="accept", content={"value": True})

    rr = RoundRobin(bases)
    http = httpx2.AsyncClient(transport=rr, timeout=httpx2.Timeout(30.0, read=60.0), headers=agent_headers())
    aggregate = target.startswith("@")
    url = f"{bases[0]}/mcp" if aggregate else f"{bases[0]}/mcp/{target}"
    tool = f"{target[1:]}.confirm" if aggregate else "confirm"
    client = Client(streamable_http_client(url, http_client=http), mode=os.environ.get("MCP_MODE", "auto"),
                    elicitation_callback=on_elicit)
    out = {"asked": asked}
    async with client:
        try:
            r = await client.call_tool(tool, {"question": "Deploy?"})
            out.update(result=r.content[0].text, is_error=r.is_error)
        except MCPError as e:
            out["error"] = err(e)
        out["protocol_version"] = client.session.protocol_version
    out["ports"] = sorted({e["port"] for e in rr.log})
    return out


async def aggregate_listen(bases):
    client, _ = connect(None, bases)
    out = {}
    async with client:
        out["protocol_version"] = client.session.protocol_version
        async with client.listen(tools_list_changed=True) as sub:
            out["honored"] = sub.honored.model_dump(by_alias=True, exclude_none=True)
            for name in sorted(t.name for t in (await client.list_tools()).tools if t.name.endswith(".announce")):
                out[name] = (await client.call_tool(name, {})).content[0].text
                event = await asyncio.wait_for(sub.__anext__(), 10)
                out[name + " event"] = type(event).__name__
    return out


async def notify(server, bases):
    """The SDK client (legacy era: it opens the session's GET stream after initialize) sees the
    list change the server announces, whichever nodes its requests land on."""
    out = {}
    seen = asyncio.Event()

    async def on_message(m):
        if getattr(m, "method", None) == "notifications/tools/list_changed":
            seen.set()

    rr = RoundRobin(bases)
    http = httpx2.AsyncClient(transport=rr, timeout=httpx2.Timeout(30.0, read=60.0), headers=agent_headers())
    client = Client(streamable_http_client(f"{bases[0]}/mcp/{server}", http_client=http), mode="legacy",
                    message_handler=on_message)
    async with client:
        await rr.stream_open()  # the SDK opens it in the background after initialize
        out["announce"] = (await client.call_tool("announce", {})).content[0].text
        try:
            await asyncio.wait_for(seen.wait(), 10)
            out["sdk_saw_list_changed"] = True
        except asyncio.TimeoutError:
            out["sdk_saw_list_changed"] = False
    out["sdk_methods"] = sorted({e["method"] for e in rr.log})
    return out


async def replay(server, bases):
    """Raw HTTP, one request per node: the stream on one node, the calls on others."""
    out = {}
    h = {"accept": "application/json, text/event-stream", "content-type": "application/json", **agent_headers()}
    url = lambda i: f"{bases[i % len(bases)]}/mcp/{server}"
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(10.0)) as c:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
        r = await c.post(url(0), json=init, headers=h)
        sh = dict(h, **{"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"})
        call = lambda i, n: c.post(url(i), headers=sh, json={"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                                              "params": {"name": "announce", "arguments": {}}})

        async def events(stream, n):
            got, ev = [], {}
            async for line in stream.aiter_lines():
                if line.startswith("id:"):
                    ev["id"] = line[3:].strip()
                elif line.startswith("data:"):
                    ev["data"] = json.loads(line[5:])
                elif line == "" and ev:
                    got.append(ev)
                    ev = {}
                    if len(got) == n:
                        return got
            return got

        async with c.stream("GET", url(1), headers=sh) as stream:
            # The answer's head arrived: the owner has the session's queue open, so what the
            # server sends from now on is buffered for this stream.
            out["get_status"] = stream.status_code
            await call(2, 2)
            first = await asyncio.wait_for(events(stream, 1), 10)
        out["first"] = first
        # Missed while disconnected: two more announcements.
        for n in (3, 4):
            await call(n, n)
        resumed_headers = dict(sh, **{"last-event-id": first[0]["id"]})
        async with c.stream("GET", url(2), headers=resumed_headers) as stream:
            out["replayed"] = await asyncio.wait_for(events(stream, 2), 10)
        out["delete"] = (await c.delete(url(1), headers=sh)).status_code
        out["after_delete"] = (await call(0, 5)).status_code
        out["get_after_delete"] = (await c.get(url(2), headers=sh)).status_code
    return out


async def probe(server, calls, bases):
    client, rr = connect(None if server == "-" else server, bases)
    out = {"calls": {}}
    async with client:
        listed = await client.list_tools()
        out["tools"] = sorted(t.name for t in listed.tools)
        out["descriptions"] = {t.name: t.description for t in listed.tools}
        out["tools_meta"] = (listed.meta or {}).get("dev.joch/policy") if hasattr(listed, "meta") else None
        try:
            out["prompts"] = sorted(p.name for p in (await client.list_prompts()).prompts)
        except MCPError as e:
            out["prompts"] = err(e)
        out["sequence"] = []
        out["metas"] = {}
        for name, args in calls:
            try:
                r = await client.call_tool(name, args)
                out["calls"][name] = r.content[0].text if r.content else ""
                out["metas"][name] = getattr(r, "meta", None)
            except MCPError as e:
                out["calls"][name] = err(e)
            out["sequence"].append(out["calls"][name])
        out["protocol_version"] = client.session.protocol_version
    return out


async def main(argv):
    cmd = argv[1]
    if cmd == "walkthrough":
        result = await walkthrough(argv[2], argv[3:])
    elif cmd == "quarantine":
        result = await quarantine(argv[2], argv[3], argv[4], argv[5:])
    elif cmd == "progress":
        result = await progress(argv[2], argv[3:])
    elif cmd == "resume":
        result = await resume(argv[2], argv[3:])
    elif cmd == "listen":
        result = await listen(argv[2], argv[3:])
    elif cmd == "aggregate_notify":
        result = await aggregate_notify(argv[2:])
    elif cmd == "subscribe":
        result = await subscribe(argv[2], argv[3:])
    elif cmd == "elicit":
        result = await elicit(argv[2], argv[3:])
    elif cmd == "aggregate_listen":
        result = await aggregate_listen(argv[2:])
    elif cmd == "notify":
        result = await notify(argv[2], argv[3:])
    elif cmd == "probe":
        result = await probe(argv[2], json.loads(argv[3]), argv[4:])
    elif cmd == "replay":
        result = await replay(argv[2], argv[3:])
    elif cmd == "era":
        result = await era(argv[2], argv[3:])
    elif cmd == "aggregate":
        result = await aggregate(argv[2], argv[3], argv[4:])
    elif cmd == "stdio":
        result = await stdio(argv[2], argv[3:])
    elif cmd == "pin":
        result = await pin(argv[2], argv[3], argv[4], argv[5], argv[6:])
    else:
        raise SystemExit(f"unknown scenario {cmd}")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
