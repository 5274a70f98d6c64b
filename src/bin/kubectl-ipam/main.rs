#![forbid(unsafe_code)]
//! `kubectl-ipam`: the `kubectl ipam` plugin. Questions operators ask of an address plan —
//! what is used and free, who holds an address, what was released, which pools run full —
//! answered from the API with the server's own types and allocator.
//!
//! ```text
//! kubectl ipam tree [NAME] [--depth N]
//! kubectl ipam lookup ADDRESS|CIDR
//! kubectl ipam free NAME [--length N]
//! kubectl ipam released [--older-than DURATION]
//! kubectl ipam top [--limit N]
//! ```
//! Every command takes `-o json`, `--kubeconfig` and `--context` (as kubectl does), and reads
//! its lists in pages.
mod commands;
mod fetch;
mod hierarchy;
mod table;

use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::PathBuf;
use std::process::ExitCode;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-ipam",
    about = "Inspect the address plan served by ipam-apiserver (kubectl ipam ...)"
)]
struct Args {
    /// Path to the kubeconfig file (default: the files in $KUBECONFIG, then ~/.kube/config,
    /// then the in-cluster service account).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "text"
    )]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The hierarchy under one IPPrefix, or under every root.
    Tree {
        name: Option<String>,
        /// Levels shown below the start (0: the start only).
        #[arg(long)]
        depth: Option<usize>,
    },
    /// The IPPrefixes that contain an address or CIDR, root first; exit 1 when none does.
    Lookup { address: String },
    /// The free blocks of an IPPrefix, in address order.
    Free {
        name: String,
        /// Count how many blocks of this prefix length still fit.
        #[arg(long)]
        length: Option<u8>,
    },
    /// Released IPPrefixes (claim gone, reclaimPolicy Retain), oldest first.
    Released {
        /// Only those released at least this long ago, e.g. 30s, 15m, 12h, 7d.
        #[arg(long, value_parser = commands::parse_duration)]
        older_than: Option<std::time::Duration>,
    },
    /// The most utilized IPPrefixes that have children or are roots.
    Top {
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Error> {
    let client = client(&args).await?;
    let out = args.output;
    match args.command {
        Command::Tree { name, depth } => commands::tree(&client, name.as_deref(), depth, out).await,
        Command::Lookup { address } => commands::lookup(&client, &address, out).await,
        Command::Free { name, length } => commands::free(&client, &name, length, out).await,
        Command::Released { older_than } => commands::released(&client, older_than, out).await,
        Command::Top { limit } => commands::top(&client, limit, out).await,
    }
}

/// A client as kubectl would build it from `--kubeconfig` and `--context`.
async fn client(args: &Args) -> Result<kube::Client, Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}
