//! The `clinic` binary: all of it lives in the library (`clinic_api::cli`).

fn main() -> std::process::ExitCode {
    clinic_api::cli::main()
}
