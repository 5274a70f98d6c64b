//! The audit log, as kube-apiserver's (`--audit-log-path`, `--audit-policy-file`, rotation
//! flags): one audit.k8s.io/v1 `Event` per line for each request the [`policy`] selects.
//!
//! Requests are recorded by a middleware ([`layer`]) that sits after authentication (it needs
//! the user) and before authorization (a 403 is recorded too); requests authentication turns
//! away (401) through its hook ([`Auditor::authentication_failures`]). Write handlers name the
//! objects they wrote with [`written`]; the event then carries the block in annotations
//! ([`PREFIX_ANNOTATION`], [`PARENT_ANNOTATION`], [`IPPREFIX_ANNOTATION`]), so the log answers
//! "who held fd20::5, and when" after the objects are gone; what the server does by itself (a
//! retention that ends) the registry reports to [`Auditor::server_changes`]. A request writes
//! its event's line, borrowing what it can ([`record`]), into a bounded queue of bytes; one
//! thread writes the queue out in batches ([`sink`]): auditing never blocks a request.
mod event;
#[cfg(test)]
mod fixtures;
mod internal;
mod json;
mod middleware;
pub mod policy;
mod record;
mod recorded_body;
pub mod rotate;
pub mod sink;
mod unauthenticated;

pub use event::{
    describe, written, Described, Event, Level, Stage, Written, CLAIM_ANNOTATION,
    IPPREFIX_ANNOTATION, PARENT_ANNOTATION, PREFIX_ANNOTATION,
};
pub use internal::{INTERNAL_USER, REASON_ANNOTATION};

use crate::options::AuditConfig;
use policy::Policy;
use std::sync::Arc;
use std::time::Duration;

/// The policy and the writer's queue; cheap to clone.
#[derive(Clone)]
pub struct Auditor(Arc<Inner>);

struct Inner {
    policy: Policy,
    sender: sink::Sender,
}

/// Read the policy, open the log and start its writer. Errors name the flag at fault.
pub fn start(config: &AuditConfig) -> Result<(Auditor, sink::Writer), String> {
    let policy = match &config.policy_file {
        Some(path) => Policy::load(path)?,
        None => Policy::default_writes(),
    };
    let limits = rotate::Limits {
        max_size: match config.max_size_mb {
            0 => rotate::DEFAULT_MAX_SIZE,
            mb => u64::from(mb) * 1024 * 1024,
        },
        max_backups: config.max_backups as usize,
        max_age: (config.max_age_days > 0)
            .then(|| Duration::from_secs(u64::from(config.max_age_days) * 86_400)),
    };
    let output = sink::Output::open(&config.path, limits)
        .map_err(|e| format!("--audit-log-path {}: {e}", config.path.display()))?;
    let (sender, writer) = sink::start(output, sink::QUEUE_CAPACITY)
        .map_err(|e| format!("cannot start the audit log writer: {e}"))?;
    Ok((Auditor(Arc::new(Inner { policy, sender })), writer))
}

/// `app` with requests recorded by `auditor`, if there is one. Layer it inside authentication
/// and outside authorization.
pub fn layer(app: axum::Router, auditor: Option<&Auditor>) -> axum::Router {
    match auditor {
        Some(a) => app.layer(middleware::AuditLayer(a.clone())),
        None => app,
    }
}
