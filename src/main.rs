fn main() -> std::process::ExitCode {
    lookout_ingester::cli::main()
}
