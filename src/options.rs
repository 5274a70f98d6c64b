//! Command line: clap options → [`ServeOptions::validate`] → a [`Config`] the server runs from.
//!
//! The shape follows kubernetes/sample-apiserver (Options → Complete/Validate → run) and the flag
//! names are k8s.io/apiserver's, so a Deployment written for any aggregated server reads the same.
//! `validate` reports every problem at once, like `Options.Validate() []error`.
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// IP address management served as the Kubernetes API group ipam.miloapis.com/v1alpha1.
#[derive(Debug, Parser)]
#[command(name = "ipam-apiserver", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API over HTTPS.
    Serve(ServeOptions),
}

/// `ipam-apiserver serve` flags, as typed. Nothing here is checked beyond its syntax; see
/// [`ServeOptions::validate`].
#[derive(Debug, Clone, Args)]
pub struct ServeOptions {
    /// Run without a cluster: make a CA, a serving certificate and an admin client certificate in
    /// DATA_DIR/pki on first start, write DATA_DIR/kubeconfig, and accept only certificates from
    /// that CA.
    #[arg(long)]
    pub standalone: bool,

    /// Directory holding the database (and, with --standalone, the PKI and kubeconfig).
    #[arg(
        long,
        env = "IPAM_DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// The port on which to serve HTTPS. 0 picks a free port (the log line and, with
    /// --standalone, the kubeconfig say which).
    #[arg(long, default_value_t = 8443, value_name = "PORT")]
    pub secure_port: u16,

    /// The IP address on which to listen [default: 127.0.0.1 with --standalone, else 0.0.0.0].
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<IpAddr>,

    /// With --etcd-servers: the IP address the other replicas reach this one at, to hand the
    /// leader the creates they receive [default: --bind-address unless unspecified, else the
    /// local address toward the first etcd member].
    #[arg(long, value_name = "IP")]
    pub advertise_address: Option<IpAddr>,

    /// File containing the x509 serving certificate (with any intermediates after it).
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// File containing the x509 private key matching --tls-cert-file.
    #[arg(long, value_name = "FILE")]
    pub tls_private_key_file: Option<PathBuf>,

    /// CA bundle: a client certificate signed by one of these authenticates as its CommonName,
    /// with its Organizations as groups.
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// CA bundle verifying front-proxy client certificates before any --requestheader-username-headers
    /// are trusted. Default: read from kube-system/extension-apiserver-authentication.
    #[arg(long, value_name = "FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// Front-proxy client certificate common names allowed to assert identities in headers.
    /// Empty means any certificate signed by --requestheader-client-ca-file.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub requestheader_allowed_names: Option<Vec<String>>,

    /// Request headers to inspect for the username (common value: X-Remote-User).
    #[arg(long, value_delimiter = ',', value_name = "HEADERS")]
    pub requestheader_username_headers: Option<Vec<String>>,

    /// Request headers to inspect for groups (common value: X-Remote-Group).
    #[arg(long, value_delimiter = ',', value_name = "HEADERS")]
    pub requestheader_group_headers: Option<Vec<String>>,

    /// Request header prefixes to inspect for extra user info (common value: X-Remote-Extra-).
    #[arg(long, value_delimiter = ',', value_name = "PREFIXES")]
    pub requestheader_extra_headers_prefix: Option<Vec<String>>,

    /// Kubeconfig of the cluster this server is aggregated into. Default: the in-cluster
    /// service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig for TokenReview and the extension-apiserver-authentication ConfigMap.
    /// Default: --kubeconfig.
    #[arg(long, value_name = "FILE")]
    pub authentication_kubeconfig: Option<PathBuf>,

    /// Kubeconfig for SubjectAccessReview. Default: --kubeconfig.
    #[arg(long, value_name = "FILE")]
    pub authorization_kubeconfig: Option<PathBuf>,

    /// Number of recent events retained for watches; a watch from an older resourceVersion
    /// gets 410 Expired.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub watch_history: usize,

    /// Bytes the retained watch events may hold (their objects and shared encodings; suffixes
    /// Ki, Mi, Gi); the oldest go first, and a watch from before them gets 410 Expired.
    #[arg(long, default_value = "256Mi", value_name = "BYTES", value_parser = parse_bytes)]
    pub watch_history_bytes: usize,

    /// TLS connections open at once. At the limit a new connection closes the one idle the
    /// longest, or is refused when none is idle. Default: three quarters of what the open-file
    /// limit (raised to its hard limit at start) leaves after 256 for the rest of the server.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// How long a connection may go without a request in flight (before its first request,
    /// between requests, HTTP/2 without open streams) before the server closes it; a watch is
    /// a request in flight. 0 disables.
    #[arg(long, default_value = "90s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_connection_timeout: std::time::Duration,

    /// Per-IPPrefix utilization series on /metrics: at most this many IPPrefixes that have
    /// children, the most utilized first (bounds the series count of large plans).
    #[arg(long, default_value_t = crate::metrics::DEFAULT_PREFIX_SERIES, value_name = "N")]
    pub metrics_prefix_series: usize,

    /// Write an audit.k8s.io/v1 Event per audited request to this file, one per line; `-` is
    /// standard output. Without it, nothing is audited.
    #[arg(long, value_name = "FILE")]
    pub audit_log_path: Option<PathBuf>,

    /// An audit.k8s.io/v1 Policy saying which requests are recorded at which level. Default:
    /// every write (create, update, patch, delete, deletecollection) at Metadata.
    #[arg(long, value_name = "FILE")]
    pub audit_policy_file: Option<PathBuf>,

    /// Days to keep rotated audit log files (by the timestamp in their names); 0 keeps them.
    #[arg(long = "audit-log-maxage", default_value_t = 0, value_name = "DAYS")]
    pub audit_log_maxage: u32,

    /// Rotated audit log files to keep; 0 keeps all.
    #[arg(long = "audit-log-maxbackup", default_value_t = 0, value_name = "N")]
    pub audit_log_maxbackup: u32,

    /// Megabytes the audit log may reach before it is rotated; 0 means 100.
    #[arg(long = "audit-log-maxsize", default_value_t = 0, value_name = "MB")]
    pub audit_log_maxsize: u32,

    /// etcd client URLs (v3 API): keep all API data in etcd instead of sled in --data-dir, so
    /// several replicas can serve the same data.
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    pub etcd_servers: Vec<String>,

    /// The root of this server's keys in etcd; they live under PREFIX/ipam.miloapis.com/.
    #[arg(long, default_value = "/registry", value_name = "PREFIX")]
    pub etcd_prefix: String,

    /// CA bundle verifying etcd's serving certificates (TLS).
    #[arg(long, value_name = "FILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// Client certificate presented to etcd, with --etcd-keyfile.
    #[arg(long, value_name = "FILE")]
    pub etcd_certfile: Option<PathBuf>,

    /// Private key of --etcd-certfile.
    #[arg(long, value_name = "FILE")]
    pub etcd_keyfile: Option<PathBuf>,

    /// How often one replica compacts etcd's history (Go duration: 5m, 1h30m, 90s); 0 leaves
    /// compaction to the operator.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub etcd_compaction_interval: std::time::Duration,

    /// With --etcd-servers: the time to live of the leader's lease in etcd (at least 2s). One
    /// replica at a time refreshes parent status, frees expired retention, writes Released
    /// events and compacts; when it stops renewing its lease another takes over within this.
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub leader_elect_lease_duration: std::time::Duration,
}

/// A byte count: a number, optionally with a binary suffix (`Ki`, `Mi`, `Gi`) as Kubernetes
/// quantities have them.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => return Err(format!("{s:?}: expected a number of bytes, e.g. 256Mi")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?}: expected a number of bytes, e.g. 256Mi"))
}

/// A duration as Kubernetes' flags write it (`90s`, `1m30s`, `500ms`, or Go's bare `0`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let parsed: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 90s or 1m30s: {e}"))?;
    std::time::Duration::try_from(parsed).map_err(|_| format!("{s:?} is negative"))
}

/// Validated configuration: every combination here is one the server can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where to listen; port 0 means an ephemeral port.
    pub bind: SocketAddr,
    /// `--advertise-address` (see `peer::url` for the default).
    pub advertise_address: Option<IpAddr>,
    /// Events retained for watch resumption.
    pub watch_history: usize,
    /// Bytes those events may hold.
    pub watch_history_bytes: usize,
    /// `None`: derived from the open-file limit at start.
    pub max_connections: Option<usize>,
    /// `None`: idle connections are kept.
    pub idle_connection_timeout: Option<std::time::Duration>,
    /// The bound on per-IPPrefix metric series.
    pub metrics_prefix_series: usize,
    /// `Some`: the store is etcd; `None`: sled in `data_dir`.
    pub etcd: Option<crate::store::EtcdOptions>,
    pub mode: Mode,
    /// `None`: no audit log.
    pub audit: Option<AuditConfig>,
}

/// The audit log's flags, as kube-apiserver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// `-` is standard output.
    pub path: PathBuf,
    pub policy_file: Option<PathBuf>,
    pub max_age_days: u32,
    pub max_backups: u32,
    /// 0 means 100.
    pub max_size_mb: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No cluster: our own CA in `data_dir/pki`, an admin kubeconfig in `data_dir/kubeconfig`.
    Standalone,
    /// Aggregated into a cluster: delegated authentication and authorization.
    Cluster(Box<ClusterConfig>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub tls_cert_file: PathBuf,
    pub tls_private_key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    /// Flags given for the front proxy; anything `None` is read from
    /// `kube-system/extension-apiserver-authentication`.
    pub requestheader: RequestHeaderFlags,
    /// `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub authentication_kubeconfig: Option<PathBuf>,
    pub authorization_kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHeaderFlags {
    pub client_ca_file: Option<PathBuf>,
    pub allowed_names: Option<Vec<String>>,
    pub username_headers: Option<Vec<String>>,
    pub group_headers: Option<Vec<String>>,
    pub extra_headers_prefix: Option<Vec<String>>,
}

/// Every problem found in the flags, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid flags:\n  {}", .0.join("\n  "))]
pub struct InvalidOptions(pub Vec<String>);

impl ServeOptions {
    /// Fill defaults that depend on other flags, and check every rule; all violations are
    /// reported together.
    pub fn validate(self) -> Result<Config, InvalidOptions> {
        let mut errs = Vec::new();

        if self.data_dir.as_os_str().is_empty() {
            errs.push("--data-dir must not be empty".to_string());
        }
        if self.watch_history == 0 {
            errs.push("--watch-history must be at least 1".to_string());
        }
        if self.max_connections == Some(0) {
            errs.push("--max-connections must be at least 1".to_string());
        }
        for (flag, headers) in [
            (
                "--requestheader-username-headers",
                &self.requestheader_username_headers,
            ),
            (
                "--requestheader-group-headers",
                &self.requestheader_group_headers,
            ),
            (
                "--requestheader-extra-headers-prefix",
                &self.requestheader_extra_headers_prefix,
            ),
        ] {
            for h in headers.iter().flatten() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    errs.push(format!("{flag}: {h:?} is not a valid HTTP header name"));
                }
            }
        }

        let etcd = self.etcd_options(&mut errs);
        let audit = match (self.audit_log_path, self.audit_policy_file) {
            (Some(path), policy_file) => Some(AuditConfig {
                path,
                policy_file,
                max_age_days: self.audit_log_maxage,
                max_backups: self.audit_log_maxbackup,
                max_size_mb: self.audit_log_maxsize,
            }),
            (None, Some(_)) => {
                errs.push("--audit-policy-file has no effect without --audit-log-path".to_string());
                None
            }
            (None, None) => None,
        };

        let default_ip = if self.standalone {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let bind = SocketAddr::new(self.bind_address.unwrap_or(default_ip), self.secure_port);

        let mode = if self.standalone {
            // Standalone owns its PKI and has no cluster; a cluster flag here is a mistake the
            // user should hear about rather than have silently ignored.
            let cluster_only = [
                ("--tls-cert-file", self.tls_cert_file.is_some()),
                (
                    "--tls-private-key-file",
                    self.tls_private_key_file.is_some(),
                ),
                ("--client-ca-file", self.client_ca_file.is_some()),
                (
                    "--requestheader-client-ca-file",
                    self.requestheader_client_ca_file.is_some(),
                ),
                (
                    "--requestheader-allowed-names",
                    self.requestheader_allowed_names.is_some(),
                ),
                (
                    "--requestheader-username-headers",
                    self.requestheader_username_headers.is_some(),
                ),
                (
                    "--requestheader-group-headers",
                    self.requestheader_group_headers.is_some(),
                ),
                (
                    "--requestheader-extra-headers-prefix",
                    self.requestheader_extra_headers_prefix.is_some(),
                ),
                ("--kubeconfig", self.kubeconfig.is_some()),
                (
                    "--authentication-kubeconfig",
                    self.authentication_kubeconfig.is_some(),
                ),
                (
                    "--authorization-kubeconfig",
                    self.authorization_kubeconfig.is_some(),
                ),
            ];
            for (flag, given) in cluster_only {
                if given {
                    errs.push(format!(
                        "{flag} cannot be used with --standalone (standalone mode makes its own CA and certificates in DATA_DIR/pki)"
                    ));
                }
            }
            Some(Mode::Standalone)
        } else {
            match (self.tls_cert_file, self.tls_private_key_file) {
                (Some(tls_cert_file), Some(tls_private_key_file)) => {
                    Some(Mode::Cluster(Box::new(ClusterConfig {
                        tls_cert_file,
                        tls_private_key_file,
                        client_ca_file: self.client_ca_file,
                        requestheader: RequestHeaderFlags {
                            client_ca_file: self.requestheader_client_ca_file,
                            allowed_names: self.requestheader_allowed_names,
                            username_headers: self.requestheader_username_headers,
                            group_headers: self.requestheader_group_headers,
                            extra_headers_prefix: self.requestheader_extra_headers_prefix,
                        },
                        kubeconfig: self.kubeconfig,
                        authentication_kubeconfig: self.authentication_kubeconfig,
                        authorization_kubeconfig: self.authorization_kubeconfig,
                    })))
                }
                (cert, key) => {
                    if cert.is_none() {
                        errs.push(
                            "--tls-cert-file is required without --standalone (or pass --standalone to run without a cluster)"
                                .to_string(),
                        );
                    }
                    if key.is_none() {
                        errs.push(
                            "--tls-private-key-file is required without --standalone".to_string(),
                        );
                    }
                    None
                }
            }
        };

        match mode {
            Some(mode) if errs.is_empty() => Ok(Config {
                data_dir: self.data_dir,
                bind,
                advertise_address: self.advertise_address,
                watch_history: self.watch_history,
                max_connections: self.max_connections,
                idle_connection_timeout: Some(self.idle_connection_timeout)
                    .filter(|t| !t.is_zero()),
                metrics_prefix_series: self.metrics_prefix_series,
                watch_history_bytes: self.watch_history_bytes,
                etcd,
                mode,
                audit,
            }),
            _ => Err(InvalidOptions(errs)),
        }
    }
}

impl ServeOptions {
    /// The etcd flags, when `--etcd-servers` is given; a flag that needs it is an error without.
    fn etcd_options(&self, errs: &mut Vec<String>) -> Option<crate::store::EtcdOptions> {
        let servers: Vec<String> = self
            .etcd_servers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            for (flag, given) in [
                ("--etcd-cafile", self.etcd_cafile.is_some()),
                ("--etcd-certfile", self.etcd_certfile.is_some()),
                ("--etcd-keyfile", self.etcd_keyfile.is_some()),
            ] {
                if given {
                    errs.push(format!("{flag} needs --etcd-servers"));
                }
            }
            return None;
        }
        for url in &servers {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errs.push(format!(
                    "--etcd-servers: {url:?} is not an http:// or https:// URL"
                ));
            }
        }
        if self.leader_elect_lease_duration < std::time::Duration::from_secs(2) {
            errs.push("--leader-elect-lease-duration must be at least 2s".to_string());
        }
        if self.etcd_certfile.is_some() != self.etcd_keyfile.is_some() {
            errs.push("--etcd-certfile and --etcd-keyfile go together".to_string());
        }
        let prefix = self.etcd_prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') {
            errs.push(format!(
                "--etcd-prefix: {:?} must start with /",
                self.etcd_prefix
            ));
        }
        Some(crate::store::EtcdOptions {
            servers,
            prefix,
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
            compaction_interval: self.etcd_compaction_interval,
            watch_history: crate::store::HistoryLimits {
                events: self.watch_history,
                bytes: self.watch_history_bytes,
            },
            leader_lease: self.leader_elect_lease_duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, InvalidOptions> {
        let mut argv = vec!["ipam-apiserver", "serve"];
        argv.extend_from_slice(args);
        let Command::Serve(opts) = Cli::try_parse_from(argv).expect("flags parse").command;
        opts.validate()
    }

    #[test]
    fn standalone_defaults_to_loopback_and_8443() {
        let cfg = parse(&["--standalone", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(cfg.bind, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(cfg.mode, Mode::Standalone);
        assert_eq!(cfg.watch_history, 100_000);
        assert_eq!(cfg.max_connections, None);
        assert_eq!(
            cfg.idle_connection_timeout,
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(cfg.metrics_prefix_series, 1000);
        assert_eq!(cfg.watch_history_bytes, 256 << 20);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn cluster_mode_defaults_to_all_interfaces_and_needs_serving_cert() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.to_string().contains("--tls-cert-file is required"));

        let cfg = parse(&[
            "--tls-cert-file",
            "c.pem",
            "--tls-private-key-file",
            "k.pem",
            "--requestheader-allowed-names",
            "front-proxy-client,aggregator",
            "--requestheader-username-headers",
            "X-Remote-User",
            "--secure-port",
            "0",
        ])
        .unwrap();
        assert_eq!(cfg.bind, "0.0.0.0:0".parse().unwrap());
        let Mode::Cluster(c) = cfg.mode else {
            panic!("cluster mode expected")
        };
        assert_eq!(
            c.requestheader.allowed_names,
            Some(vec!["front-proxy-client".into(), "aggregator".into()])
        );
        assert_eq!(c.requestheader.group_headers, None);
    }

    #[test]
    fn standalone_rejects_cluster_flags_and_reports_all_problems() {
        let err = parse(&[
            "--standalone",
            "--client-ca-file",
            "ca.pem",
            "--kubeconfig",
            "kc",
            "--watch-history",
            "0",
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.to_string().contains("--client-ca-file cannot be used"));
    }

    #[test]
    fn watch_history_bytes_takes_binary_suffixes() {
        let bytes = |v: &str| parse(&["--standalone", "--watch-history-bytes", v]);
        assert_eq!(bytes("8Mi").unwrap().watch_history_bytes, 8 << 20);
        assert_eq!(bytes("1000").unwrap().watch_history_bytes, 1000);
        let argv = [
            "ipam-apiserver",
            "serve",
            "--standalone",
            "--watch-history-bytes",
            "8MB",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn bad_header_name_is_reported() {
        let err = parse(&[
            "--tls-cert-file",
            "c",
            "--tls-private-key-file",
            "k",
            "--requestheader-group-headers",
            "X Bad",
        ])
        .unwrap_err();
        assert!(err.0[0].contains("not a valid HTTP header name"), "{err}");
    }

    #[test]
    fn connection_flags_take_kubernetes_durations() {
        let cfg = parse(&[
            "--standalone",
            "--max-connections",
            "500",
            "--idle-connection-timeout",
            "1m30s",
        ])
        .unwrap();
        assert_eq!(cfg.max_connections, Some(500));
        assert_eq!(
            cfg.idle_connection_timeout,
            Some(std::time::Duration::from_secs(90))
        );
        let cfg = parse(&["--standalone", "--idle-connection-timeout", "0"]).unwrap();
        assert_eq!(cfg.idle_connection_timeout, None);
        let cfg = parse(&["--standalone", "--idle-connection-timeout", "500ms"]).unwrap();
        assert_eq!(
            cfg.idle_connection_timeout,
            Some(std::time::Duration::from_millis(500))
        );
        let err = parse(&["--standalone", "--max-connections", "0"]).unwrap_err();
        assert!(err.0[0].contains("--max-connections"), "{err}");
    }

    #[test]
    fn bind_address_overrides_default() {
        let cfg = parse(&[
            "--standalone",
            "--bind-address",
            "::1",
            "--secure-port",
            "0",
        ])
        .unwrap();
        assert_eq!(cfg.bind, "[::1]:0".parse().unwrap());
    }

    #[test]
    fn audit_flags_make_an_audit_config_and_a_policy_needs_a_log() {
        let cfg = parse(&["--standalone"]).unwrap();
        assert_eq!(cfg.audit, None);
        let cfg = parse(&[
            "--standalone",
            "--audit-log-path",
            "-",
            "--audit-log-maxsize",
            "5",
            "--audit-log-maxbackup",
            "3",
        ])
        .unwrap();
        assert_eq!(
            cfg.audit,
            Some(AuditConfig {
                path: PathBuf::from("-"),
                policy_file: None,
                max_age_days: 0,
                max_backups: 3,
                max_size_mb: 5,
            })
        );
        let err = parse(&["--standalone", "--audit-policy-file", "p.yaml"]).unwrap_err();
        assert!(err.0[0].contains("--audit-log-path"), "{err}");
    }

    #[test]
    fn etcd_flags_choose_etcd_and_bad_ones_are_named() {
        let cfg = parse(&[
            "--standalone",
            "--etcd-servers",
            "http://127.0.0.1:2379,http://127.0.0.1:2381",
            "--etcd-compaction-interval",
            "1h30m",
        ])
        .unwrap();
        let etcd = cfg.etcd.expect("etcd chosen");
        assert_eq!(etcd.servers.len(), 2);
        assert_eq!(etcd.prefix, "/registry");
        assert_eq!(
            etcd.compaction_interval,
            std::time::Duration::from_secs(5400)
        );
        assert!(parse(&["--standalone"]).unwrap().etcd.is_none());
        let err = parse(&[
            "--standalone",
            "--etcd-servers",
            "127.0.0.1:2379",
            "--etcd-certfile",
            "c.pem",
        ])
        .unwrap_err();
        let err = err.to_string();
        for flag in [
            "--etcd-servers: \"127.0.0.1:2379\"",
            "--etcd-certfile and --etcd-keyfile",
        ] {
            assert!(err.contains(flag), "{flag}: {err}");
        }
        let err = parse(&["--standalone", "--etcd-cafile", "ca.pem"]).unwrap_err();
        assert!(err
            .to_string()
            .contains("--etcd-cafile needs --etcd-servers"));
    }
}
