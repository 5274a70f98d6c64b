//! What the server changes on its own, without a request naming the object: a Released block
//! freed when its retention ends, Released children freed with their parent, a terminating
//! prefix or claim that goes once nothing below holds it. A transaction collects them and the
//! registry hands them, once the commit applied, to whoever `main` set with
//! [`Registry::report_server_changes`](super::Registry::report_server_changes) (the audit log),
//! so every block that changes hands is named without the registry knowing who listens.
use crate::api::{IPPrefix, IPPrefixClaim};
use std::sync::Arc;

/// The object as the server changed it (for a delete: as it was last stored).
#[derive(Debug, Clone)]
pub enum Changed {
    Prefix(IPPrefix),
    Claim(IPPrefixClaim),
}

/// One change the server made by itself.
#[derive(Debug, Clone)]
pub struct ServerChange {
    /// The verb a client would have used: `delete` (also when a finalizer keeps the object
    /// terminating, as a client's delete would).
    pub verb: &'static str,
    pub object: Changed,
    /// Why, one of [`reason`].
    pub reason: &'static str,
}

impl ServerChange {
    pub(super) fn delete_prefix(prefix: IPPrefix, reason: &'static str) -> ServerChange {
        ServerChange {
            verb: "delete",
            object: Changed::Prefix(prefix),
            reason,
        }
    }

    pub(super) fn delete_claim(claim: IPPrefixClaim, reason: &'static str) -> ServerChange {
        ServerChange {
            verb: "delete",
            object: Changed::Claim(claim),
            reason,
        }
    }
}

pub mod reason {
    /// A Released IPPrefix whose `status.retainedUntil` passed.
    pub const RETENTION_EXPIRED: &str = "RetentionExpired";
    /// An IPPrefix below one whose claim was deleted (reclaimPolicy Delete) goes with it.
    pub const PARENT_FREED: &str = "ParentFreed";
    /// A terminating object that waited for the blocks below it: the last of them went.
    pub const NO_LONGER_IN_USE: &str = "NoLongerInUse";
}

/// Receives the changes of one applied commit, in the order they were made. Called on the
/// writer's task: it must not block (the audit log only queues).
pub type ReportChanges = Arc<dyn Fn(Vec<ServerChange>) + Send + Sync>;
