use clap::Parser;
use eserveless::cli::{run_client, Cli, Command};
use eserveless::config::ServerConfig;

// The proxy path allocates small objects per request; mimalloc is faster at that than glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("ESERVELESS_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            match ServerConfig::resolve(&args) {
                Ok(config) => match eserveless::server::serve(config).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        1
                    }
                },
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            }
        }
        other => match run_client(other).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
