//! `tessera`: runs one role of the cluster or an admin command. It only
//! parses arguments and calls into the role crates.

mod admin;
mod bench;
mod bench_ns;
mod keys;
mod probe;
mod status;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera distributed storage")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a chunk server.
    Chunkserver {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a name server (one member of the Raft group).
    Nameserver {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run an object server (replicas of its partitions, the data log).
    Objserver {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run an S3 gateway.
    Gateway {
        /// TOML configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a whole cluster in this process (S3 on 127.0.0.1:9000).
    Dev(tessera_cli::dev::DevArgs),
    /// Measure a subsystem on a whole cluster in this process.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Cluster administration.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
}

fn main() -> std::process::ExitCode {
    tessera_common::telemetry::init_tracing();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Chunkserver { config } => {
            let config = tessera_chunkserver::config::ChunkServerConfig::load(&config)?;
            tessera_chunkserver::node::run(config)
                .await
                .context("running the chunk server")
        }
        Command::Nameserver { config } => {
            let config = tessera_nameserver::config::NameServerConfig::load(&config)?;
            tessera_nameserver::raft::node::run(config)
                .await
                .context("running the name server")
        }
        Command::Objserver { config } => {
            let config = tessera_objserver::config::ObjServerConfig::load(&config)?;
            tessera_objserver::node::run(config)
                .await
                .context("running the object server")
        }
        Command::Gateway { config } => {
            let config = tessera_gateway::config::GatewayConfig::load(&config)?;
            tessera_gateway::node::run(config).await.context("running the gateway")
        }
        Command::Dev(args) => tessera_cli::dev::run(args).await.context("running tessera dev"),
        Command::Bench { command } => bench::run(command).await,
        Command::Admin { command } => admin::run(command).await,
    }
}
