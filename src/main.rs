//! `cvgate` binary: everything lives in the library; see `cvgate::cli`.

/// mimalloc instead of glibc's malloc (see Cargo.toml for the measured reason).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() -> std::process::ExitCode {
    cvgate::cli::main()
}
