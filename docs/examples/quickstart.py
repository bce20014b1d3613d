"""The quick start's agent: the official MCP Python SDK calling the dev cluster's `demo` server
through joch, as the agent `dev-agent`.

Usage: python docs/examples/quickstart.py [CLUSTER_JSON]     (default: .joch-dev/cluster.json)

Run it with the venv `./scripts/dev-up` prepares (~/.cache/joch-venv/bin/python). It reads the
agent's token and a node's MCP URL from cluster.json; in your own agent they are configuration.
"""
import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def denial(e):
    """The denial joch sent, found in what the SDK raised (it wraps connect-time errors)."""
    if isinstance(e, MCPError):
        return e
    for inner in getattr(e, "exceptions", ()):
        found = denial(inner)
        if found is not None:
            return found
    return None


async def main(path):
    with open(path) as f:
        cluster = json.load(f)
    url = f"{cluster['nodes'][0]['mcp_url']}/mcp/demo"
    # joch authenticates every agent: its token goes in the Authorization header.
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {cluster['agent_token']}"})
    try:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            print("tools:", ", ".join(sorted(t.name for t in tools.tools)))
            result = await client.call_tool("add", {"a": 2, "b": 3})
            print("add(2, 3) =", result.content[0].text)
    except Exception as e:
        found = denial(e)
        if found is None:
            raise
        print(f"denied by joch: {found.error.message} (code {found.code}, {json.dumps(found.error.data)})")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else ".joch-dev/cluster.json"))
