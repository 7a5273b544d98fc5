fn main() {
    std::process::exit(coral::cli::main());
}
