//! The `coral` binary: every command, and the daemons it starts; all of it
//! is the library's `cli::main`.

fn main() {
    std::process::exit(coral::cli::main());
}
