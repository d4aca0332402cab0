//! The `clinic` binary: all of it lives in the library (`clinic_api::cli`).

/// jemalloc, also as `malloc` for the C libraries (see `clinic_api::heap`); naming it here lets
/// Rust's frees pass the size (`sdallocx`), which is cheaper than a plain `free`.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    clinic_api::cli::main()
}
