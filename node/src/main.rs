//! The `joch` binary: a node (`joch serve`) and the operator CLI.

/// mimalloc: the request path allocates many small, short-lived buffers across threads, where
/// glibc's allocator showed up as a quarter of a loaded node's samples.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    joch_node::cli::main()
}
