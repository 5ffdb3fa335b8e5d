//! The `cairn` binary: parse arguments, run, map the outcome to an exit code.

/// The engine allocates many small, short-lived values per step (names,
/// JSON values, journal events); mimalloc serves those markedly faster than
/// glibc's allocator (see the README's benchmark notes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cairn::cli::main()
}
