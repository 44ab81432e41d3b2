//! The command line: `serve` (default), `migrate`, `seed`, `check-config`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

/// A caching sidecar for voice-agent platforms: lead, organization, context and greeting
/// lookups served from memory or Redis, always fresh.
#[derive(Debug, Parser)]
#[command(name = "sidecache", version, about)]
pub struct Cli {
    /// Configuration file (default: ./config.toml if present).
    #[arg(long, global = true, env = "SIDECACHE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080 (overrides SIDECACHE_LISTEN and the file).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Postgres URL (overrides DATABASE_URL and the file).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Redis URL, redis:// or rediss:// (overrides REDIS_URL and the file).
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Use Redis as the second tier: true/false/1/0 (overrides REDIS_ENABLED and the file).
    #[arg(long, global = true, value_name = "BOOL")]
    pub redis_enabled: Option<String>,
    /// Log filter, e.g. info or sidecache=debug.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (the default).
    Serve(ServeArgs),
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Bulk-insert generated organizations, leads and conversations.
    Seed(SeedArgs),
    /// Load and check the configuration, print it (secrets redacted) and exit.
    CheckConfig,
}

#[derive(Debug, Args, Default, Clone)]
pub struct ServeArgs {
    /// Seed a small demo data set if the database is empty and print example requests.
    #[arg(long)]
    pub demo: bool,
    /// Do not create the database or apply migrations at start.
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SeedArgs {
    /// Organizations to create.
    #[arg(long, default_value_t = 10)]
    pub orgs: u64,
    /// Leads to create in total, spread evenly over all organizations.
    #[arg(long, default_value_t = 1000)]
    pub leads: u64,
    /// Conversations to create per new lead.
    #[arg(long, default_value_t = 3)]
    pub conversations: u64,
}

impl Cli {
    /// The flags that override configuration.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
            redis_enabled: self.redis_enabled.clone(),
            log_level: self.log_level.clone(),
        }
    }
}
