//! The `cairn` binary: parse arguments, run, map the outcome to an exit code.

#[global_allocator]
static ALLOCATOR: cairn::allocator::Allocator = cairn::allocator::Allocator;

fn main() -> std::process::ExitCode {
    // SAFETY: nothing has started a thread yet.
    unsafe { cairn::allocator::tune() };
    cairn::cli::main()
}
