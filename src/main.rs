#![forbid(unsafe_code)]
//! `ipam-apiserver serve`: parse flags, open the registry, set up TLS and authentication, bind,
//! and serve until ctrl-c or SIGTERM.
use clap::Parser;
use ipam_apiserver::auth::{self, standalone::StandalonePki};
use ipam_apiserver::options::{Cli, Command, Config, Mode};
use ipam_apiserver::{http, registry::Registry, server};
use std::process::ExitCode;
use std::sync::Arc;

type Fatal = Box<dyn std::error::Error + Send + Sync>;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let Command::Serve(options) = Cli::parse().command;
    init_tracing();
    let config = match options.validate() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), Fatal> {
    if let Mode::Cluster(_) = config.mode {
        return Err("cluster mode: not implemented yet (run with --standalone)".into());
    }

    // The registry first: it takes the data directory's lock, so a second process stops here,
    // before touching the PKI or the kubeconfig.
    let registry = Registry::open(&config.data_dir, config.watch_history)?;
    let store = registry.store().clone();
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;

    let pki = StandalonePki::load_or_create(&data_dir, config.bind.ip())?;
    let tls = pki.server_config()?;
    let authn = Arc::new(pki.authenticator()?);

    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
    let addr = listener.local_addr()?;
    let kubeconfig = pki.write_kubeconfig(&data_dir, addr)?;

    let app = http::router(registry).merge(http::health::routes()).layer(
        axum::middleware::from_fn_with_state(authn, auth::authenticate),
    );

    eprintln!(
        "Standalone mode: admin kubeconfig written to {kc}\n  export KUBECONFIG={kc}\n  kubectl --kubeconfig {kc} get ipprefixes",
        kc = kubeconfig.display()
    );
    tracing::info!("Serving securely on {addr}");
    server::run(listener, tls, app, shutdown_signal()).await?;
    store.flush()?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for ctrl-c: {e}");
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("interrupted; shutting down"),
        () = terminate => tracing::info!("SIGTERM; shutting down"),
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
