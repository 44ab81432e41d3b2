//! The `sidecache` binary: parse the command line, load settings, run the subcommand.

use std::process::ExitCode;

use clap::Parser;
use sidecache::cli::{Cli, Command, ServeArgs};
use sidecache::config::Settings;
use sidecache::{seed, startup, telemetry};

// Every request allocates a little (headers, keys, futures); glibc's malloc was ~10 % of an L1
// hit's CPU in profiles, mimalloc's thread-local free lists make that cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_process(cli.config.as_deref(), &cli.overrides()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sidecache: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        print!("{}", settings.to_redacted_toml());
        println!("\n# configuration OK");
        return ExitCode::SUCCESS;
    }
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sidecache: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecache: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Option<Command>, settings: Settings) -> anyhow::Result<()> {
    match command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            if !args.no_migrate {
                startup::prepare_database(&settings).await?;
            }
            if args.demo {
                seed::demo(&settings).await?;
            }
            startup::Application::build(settings)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Migrate => {
            startup::prepare_database(&settings).await?;
            println!("database is migrated");
            Ok(())
        }
        Command::Seed(args) => {
            startup::prepare_database(&settings).await?;
            seed::bulk(&settings, args.orgs, args.leads, args.conversations).await
        }
        Command::CheckConfig => Ok(()),
    }
}
