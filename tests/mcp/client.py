"""A real MCP client (the `mcp` package from PyPI) driving `coral mcp serve`
over stdio: lists the tools and calls each one. Prints one JSON document."""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(coral: str) -> None:
    params = StdioServerParameters(command=coral, args=["mcp", "serve"], env=dict(os.environ))
    out = {"tools": [], "calls": {}}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            out["server"] = init.serverInfo.name
            listed = await session.list_tools()
            for t in listed.tools:
                out["tools"].append({
                    "name": t.name,
                    "read_only": bool(t.annotations and t.annotations.readOnlyHint),
                    "schema_type": t.inputSchema.get("type"),
                })

            async def call(name, args):
                r = await session.call_tool(name, args)
                text = "".join(c.text for c in r.content if getattr(c, "text", None) is not None)
                out["calls"][name] = {"is_error": bool(r.isError), "text": text}
                return text

            await call("coral_services", {})
            await call("coral_red_metrics", {"window": "5m", "baseline": "1h"})
            await call("coral_service_map", {"since": "1h"})
            await call("coral_hotspots", {"service": "api"})
            await call("coral_breakdown", {"service": "api", "window": "5m", "baseline": "1h"})
            traces = json.loads(await call("coral_traces", {"since": "1h"}))
            trace_id = traces["traces"][0]["trace_id"] if traces["traces"] else "0" * 32
            await call("coral_trace", {"trace_id": trace_id})
            await call("coral_logs", {"since": "1h"})
            await call("coral_changes", {"since": "1h"})
            # Bad arguments are a tool error, not a broken session.
            r = await session.call_tool("coral_red_metrics", {"window": "soon"})
            out["bad_args"] = {"is_error": bool(r.isError), "text": r.content[0].text}
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
