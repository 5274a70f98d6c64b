#![forbid(unsafe_code)]
//! `ipam-apiserver serve`: parse flags, open the registry, set up TLS and authentication
//! (standalone PKI, or delegated to the cluster), bind, and serve until ctrl-c or SIGTERM.
use clap::Parser;
use ipam_apiserver::audit::{self, Auditor};
use ipam_apiserver::auth::{self, authz::Authorizer, standalone::StandalonePki};
use ipam_apiserver::cluster::events::EventRecorder;
use ipam_apiserver::cluster::namespaces::NamespaceLifecycle;
use ipam_apiserver::cluster::tls::ReloadingCert;
use ipam_apiserver::cluster::Cluster;
use ipam_apiserver::options::{Cli, ClusterConfig, Command, Config, Mode};
use ipam_apiserver::store::{EtcdStore, HistoryLimits, Leadership, SledStore, Store};
use ipam_apiserver::{http, peer, registry::Registry, server};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

type Fatal = Box<dyn std::error::Error + Send + Sync>;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages for its arenas; memory it returns to the kernel
    // and touches again then costs a 2 MiB page zeroed per fault (8 % of the server's CPU
    // under load; 64 clients: p99 15 ms without, 22 ms with). Plain 4 KiB pages here.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let Command::Serve(options) = Cli::parse().command;
    init_tracing();
    let config = match options.validate() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // A request whose commit is durable is woken by the store's thread, so it waits in
    // the runtime's global queue, which a busy worker otherwise checks only every ~10 tasks:
    // new requests went first and merely queued on the registry's writer lock. Every other
    // task from the global queue finishes those sooner (64 clients, 7 alternating pairs: 12.0k
    // vs 11.6k creates/s, p99 10.9 vs 11.7 ms, medians).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .global_queue_interval(2)
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    ipam_apiserver::metrics::global().set_prefix_series_limit(config.metrics_prefix_series);
    // sled's checkpoint at exit; etcd keeps nothing here.
    let data_dir = config.etcd.is_none().then(|| config.data_dir.clone());
    let served = runtime.block_on(serve(config));
    // Ends every task, and with them the store's last handles: its threads flush and exit.
    drop(runtime);
    match served {
        Ok(()) => {
            let started = std::time::Instant::now();
            match data_dir.map(|d| SledStore::checkpoint(&d, std::time::Duration::from_secs(10))) {
                Some(Ok(())) => tracing::info!(elapsed = ?started.elapsed(), "store checkpointed"),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "no checkpoint; the next start replays the store's log")
                }
                None => {}
            }
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), Fatal> {
    // First: it raises the open-file limit for everything opened after it.
    let limits = connection_limits(&config);
    // The registry first: it takes the data directory's lock, so a second process stops here,
    // before touching the PKI, the kubeconfig or the cluster.
    let store = open_store(&config).await?;
    let registry = Registry::new(store.clone()).await?;
    tokio::spawn(export_leadership(store.leadership()));
    // A previous run may have stopped between a change of children and the status write.
    // (On etcd no replica leads yet: the status writer does this once one does.)
    if store.leadership().is_leader() {
        let updated = registry.write_stale_statuses().await?;
        if updated > 0 {
            tracing::info!(prefixes = updated, "IPPrefix status brought up to date");
        }
    }
    tokio::spawn(
        registry
            .clone()
            .run_status_writer(ipam_apiserver::registry::STATUS_BATCH_PERIOD),
    );
    let (auditor, audit_writer) = match &config.audit {
        Some(c) => audit::start(c).map(|(a, w)| (Some(a), Some(w)))?,
        None => (None, None),
    };
    // What the server frees on its own (retention that ends, blocks going with their parent)
    // is audited as its own writes; set before the retention task runs.
    if let Some(a) = &auditor {
        registry.report_server_changes(a.server_changes());
    }
    // Released IPPrefixes are freed at their status.retainedUntil (at once when it passed
    // while the server was down).
    tokio::spawn(registry.clone().run_retention());
    match &config.mode {
        Mode::Standalone => serve_standalone(&config, limits, registry.clone(), auditor).await?,
        Mode::Cluster(cluster) => {
            serve_cluster(&config, cluster, limits, registry.clone(), auditor).await?
        }
    }
    // The server is gone, and with it every sender: write what is queued.
    if let Some(writer) = audit_writer {
        let wait = move || writer.finish(std::time::Duration::from_secs(10));
        let _ = tokio::task::spawn_blocking(wait).await;
    }
    // Requests are drained: store what the status writer has not yet (the leader's work).
    if store.leadership().is_leader() {
        if let Err(e) = registry.write_stale_statuses().await {
            tracing::warn!(error = %e, "IPPrefix status not brought up to date before stopping");
        }
    }
    // Another replica takes over now rather than when the lease ends.
    store.resign().await;
    store.flush()?;
    Ok(())
}

/// `ipam_leader` follows this replica's leadership.
async fn export_leadership(mut leadership: Leadership) {
    let gauge = &ipam_apiserver::metrics::global().leader;
    loop {
        leadership.acquired().await;
        gauge.set(1);
        leadership.lost().await;
        gauge.set(0);
    }
}

/// The store the flags choose: etcd with `--etcd-servers`, else sled in the data directory.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, Fatal> {
    let started = std::time::Instant::now();
    let store: Arc<dyn Store> = match &config.etcd {
        Some(etcd) => Arc::new(EtcdStore::connect(etcd).await?),
        None => {
            let history = HistoryLimits {
                events: config.watch_history,
                bytes: config.watch_history_bytes,
            };
            Arc::new(SledStore::open(&config.data_dir, history)?)
        }
    };
    tracing::info!(elapsed = ?started.elapsed(), "store opened");
    Ok(store)
}

/// `/healthz`, `/livez`, `/readyz`, failing once `registry`'s store has failed; on etcd,
/// `/readyz` also while etcd does not answer.
fn health_routes(config: &Config, registry: &Registry) -> axum::Router {
    let failed = registry.clone();
    let store_failed = move || failed.store_failed();
    match config.etcd {
        Some(_) => {
            let registry = registry.clone();
            http::health::routes_with_etcd(store_failed, move || !registry.store_ready())
        }
        None => http::health::routes(store_failed),
    }
}

async fn serve_standalone(
    config: &Config,
    limits: server::ConnectionLimits,
    registry: Registry,
    auditor: Option<Auditor>,
) -> Result<(), Fatal> {
    // On etcd no store has made it yet; it holds the PKI and the kubeconfig.
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;

    let pki = StandalonePki::load_or_create(&data_dir, config.bind.ip())?;
    let tls = pki.server_config()?;
    let authn = Arc::new(pki.authenticator()?);
    if let Some(a) = &auditor {
        authn.on_rejected(a.authentication_failures());
    }

    let listener = bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let kubeconfig = pki.write_kubeconfig(&data_dir, addr)?;

    let health = health_routes(config, &registry);
    let app = audit::layer(
        http::router(registry.clone()).merge(health),
        auditor.as_ref(),
    )
    .layer(axum::middleware::from_fn_with_state(
        authn,
        auth::authenticate,
    ));
    let serving = pki.serving_cert_der();
    let app = with_peers(config, &registry, app, addr, move || serving.clone());

    eprintln!(
        "Standalone mode: admin kubeconfig written to {kc}\n  export KUBECONFIG={kc}\n  kubectl --kubeconfig {kc} get ipprefixes",
        kc = kubeconfig.display()
    );
    let shutdown = shutdown_signal()?;
    tracing::info!("Serving securely on {addr}");
    server::run(listener, tls, app, limits, shutdown).await?;
    Ok(())
}

/// Aggregated into a cluster: authentication and authorization delegated to kube-apiserver.
async fn serve_cluster(
    config: &Config,
    cluster: &ClusterConfig,
    limits: server::ConnectionLimits,
    registry: Registry,
    auditor: Option<Auditor>,
) -> Result<(), Fatal> {
    let client = kube_client(cluster.kubeconfig.as_deref()).await?;
    let authn_client = match &cluster.authentication_kubeconfig {
        Some(path) => kube_client(Some(path)).await?,
        None => client.clone(),
    };
    let authz_client = match &cluster.authorization_kubeconfig {
        Some(path) => kube_client(Some(path)).await?,
        None => client.clone(),
    };

    let cert = ReloadingCert::load(&cluster.tls_cert_file, &cluster.tls_private_key_file)?;
    cert.spawn_reloader();
    let tls = cert.server_config()?;
    let authn = auth::delegated::authenticator(cluster, authn_client).await?;
    if let Some(a) = &auditor {
        authn.on_rejected(a.authentication_failures());
    }
    let authorizer = Arc::new(Authorizer::new(authz_client));
    let hooks = Arc::new(Cluster {
        authorizer: authorizer.clone(),
        namespaces: NamespaceLifecycle::start(client.clone()),
        events: EventRecorder::start(client),
    });
    hooks.spawn_release_events(registry.clone());

    let listener = bind(config.bind).await?;
    let addr = listener.local_addr()?;
    // Layers run outside-in: authenticate, audit, authorize, then the API.
    let health = health_routes(config, &registry);
    let app = http::router_with(registry.clone(), Some(hooks))
        .merge(health)
        .layer(axum::middleware::from_fn_with_state(
            authorizer,
            auth::authz::authorize,
        ));
    let app = audit::layer(app, auditor.as_ref()).layer(axum::middleware::from_fn_with_state(
        authn,
        auth::authenticate,
    ));
    let app = with_peers(config, &registry, app, addr, move || cert.leaf_der());
    let shutdown = shutdown_signal()?;
    tracing::info!("Serving securely on {addr}");
    server::run(listener, tls, app, limits, shutdown).await?;
    Ok(())
}

/// On etcd: publish how the other replicas reach this one, take the creates and deletes they
/// forward while it leads (outside authentication and audit: they did those), and forward
/// those arriving here to the leader (see `registry/forward.rs`).
fn with_peers(
    config: &Config,
    registry: &Registry,
    app: axum::Router,
    addr: std::net::SocketAddr,
    serving_cert: impl Fn() -> Option<Vec<u8>> + Send + 'static,
) -> axum::Router {
    let Some(etcd) = &config.etcd else {
        return app;
    };
    let peer = peer::Peer::new();
    let url = peer::url(config.advertise_address, addr, &etcd.servers);
    tracing::info!(
        url,
        "other replicas forward creates and deletes to this one at this address while it leads"
    );
    peer.advertise(registry.store().clone(), url, serving_cert);
    registry.forward_writes(Arc::new(peer::client::Forwarder::default()));
    app.merge(peer.routes(registry.clone()))
}

/// `--max-connections` and `--idle-connection-timeout`, the former derived from the open-file
/// limit unless given.
fn connection_limits(config: &Config) -> server::ConnectionLimits {
    let fd_limit = server::connections::raise_fd_limit();
    let derived = fd_limit.map(server::ConnectionLimits::max_for_fd_limit);
    let max_connections = match (config.max_connections, derived) {
        (Some(max), Some(derived)) if max > derived => {
            tracing::warn!(
                max_connections = max,
                fd_limit,
                "--max-connections is above the {derived} the open-file limit leaves room for; \
                 running out of file descriptors fails writes until connections close"
            );
            max
        }
        (Some(max), _) => max,
        (None, Some(derived)) => derived,
        (None, None) => usize::MAX,
    };
    tracing::info!(
        max_connections,
        fd_limit,
        idle_timeout = ?config.idle_connection_timeout,
        "connection limits"
    );
    server::ConnectionLimits {
        max_connections,
        idle_timeout: config.idle_connection_timeout,
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, Fatal> {
    Ok(tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?)
}

/// A client for kube-apiserver from a kubeconfig file, or the in-cluster service account.
async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, Fatal> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::incluster().map_err(|e| {
            format!("no --kubeconfig and not in a cluster (in-cluster service account: {e})")
        })?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Registers the SIGTERM and SIGINT handlers now and returns a future that completes when either
/// arrives. Registration must happen before "Serving securely on" is logged: a supervisor (or a
/// test) may send SIGTERM the moment it sees that line, and an unregistered signal kills the
/// process with the default action instead of a clean shutdown.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Fatal> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot listen for SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = sigint.recv() => tracing::info!("interrupted; shutting down"),
            _ = sigterm.recv() => tracing::info!("SIGTERM; shutting down"),
        }
    })
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
