//! API semantics: the create / update / delete pipeline written once (`generic.rs`), and the
//! policy of each kind (`prefix.rs`, `claim.rs`). Allocation happens inside the same
//! transaction that stores the objects, so a create is one atomic, durable step.

pub mod changes;
mod claim;
pub mod codec;
mod follow;
pub mod forward;
mod generic;
mod group;
mod guards;
pub mod kind;
mod list;
mod lookup;
pub mod managed_fields;
pub mod meta;
mod parents;
mod policy;
mod prefix;
mod release;
mod retention;
pub mod selector;
mod state;
mod stats;
mod status;
mod txn;
mod validate;
mod watch;

pub use changes::{Changed, ReportChanges, ServerChange};
pub use claim::child_name_outside_namespace;
pub use codec::FieldValidation;
pub use forward::{ForwardWrites, Forwarded, ForwardedCreate, ForwardedDelete, Write};
pub use generic::{
    DeleteOptions, ListOptions, ObjectList, Preconditions, PropagationPolicy, Registry, Subresource,
};
pub use kind::Kind;
pub use list::{ListChunks, LIST_CHUNK};
pub use managed_fields::{FieldManager, Operation};
pub use parents::ParentPlan;
pub use state::pool_with_children;
pub use stats::{PrefixUsage, RootUsage};
pub use status::{ignored_status_writes, STATUS_BATCH_PERIOD};
pub use watch::{Watch, WatchEvent, WatchOptions};

#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod tests;
