//! `cvgate` binary: everything lives in the library; see `cvgate::cli`.
fn main() -> std::process::ExitCode {
    cvgate::cli::main()
}
