use clap::{CommandFactory, FromArgMatches};
use eserveless::cli::{run_client, Cli, Command};
use eserveless::config::ServerConfig;

// The proxy path allocates small objects per request; mimalloc is faster at that than glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[tokio::main]
async fn main() {
    // The matches, not only the parsed `Cli`: `serve` needs to know which settings a flag or
    // an environment variable set, so that its config file fills only the others.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    let code = match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("ESERVELESS_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            let serve_matches = matches.subcommand_matches("serve").expect("clap parsed the serve command");
            match ServerConfig::load(args, serve_matches) {
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
