//! MCP as an intermediary sees it: JSON-RPC framing with limits, protocol versions of both eras,
//! the modern era's envelope, SSE events, and joch's sealed session ids. No I/O here.

pub mod envelope;
pub mod jsonrpc;
pub mod session;
pub mod sse;
pub mod version;
