// glibc's malloc was ~40% of the client's CPU on a replay (many small,
// short-lived allocations across threads); mimalloc takes a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lookout_ingester::cli::main()
}
