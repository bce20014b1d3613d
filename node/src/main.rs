//! The `joch` binary: a node (`joch serve`) and the operator CLI.

fn main() -> std::process::ExitCode {
    joch_node::cli::main()
}
