//! MCP as an intermediary sees it: JSON-RPC framing with limits, protocol versions of both eras,
//! SSE events, and joch's sealed session ids. No I/O here.

pub mod jsonrpc;
pub mod session;
pub mod sse;
pub mod version;
