//! The `heapscope` binary: parses arguments and hands over to `heapscope::cli`.
use clap::Parser;

fn main() {
    heapscope::selfmem::limit_arenas();
    let cli = heapscope::cli::Cli::parse();
    heapscope::cli::init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heapscope: error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(heapscope::cli::run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("heapscope: error: {e:#}");
            std::process::exit(1);
        }
    }
}
