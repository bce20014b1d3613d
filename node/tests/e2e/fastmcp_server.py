"""A real fastmcp server over streamable HTTP, for joch's end-to-end tests.

Usage: fastmcp_server.py PORT [VERSION]      (streamable HTTP on 127.0.0.1:PORT/mcp)
       fastmcp_server.py stdio                 (stdio)
"""
import asyncio
import sys

from fastmcp import Context, FastMCP

mcp = FastMCP("heldout", version=sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] != "stdio" else "1.4.2")


@mcp.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@mcp.tool
async def slow(steps: int, ctx: Context) -> str:
    """Count to `steps`, reporting progress every 50 ms."""
    for i in range(steps):
        await ctx.report_progress(i + 1, steps)
        await asyncio.sleep(0.05)
    return f"done {steps}"


@mcp.resource("data://greeting")
def greeting() -> str:
    """A fixed text."""
    return "hello from heldout"


@mcp.prompt
def review(code: str) -> str:
    """Ask for a code review."""
    return f"Review this code: {code}"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        mcp.run(transport="stdio", show_banner=False)
    else:
        mcp.run(transport="http", host="127.0.0.1", port=int(sys.argv[1]), path="/mcp", log_level="warning")
