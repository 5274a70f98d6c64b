//! Whether this process does the work that must happen once across replicas (parent status
//! refresh, retention expiry, Released events, compaction). A store only one process uses
//! always leads; on etcd one replica at a time does (an election on a lease).
use tokio::sync::watch;

/// A view of this replica's leadership; cheap to clone. Leading is a hint, never a guarantee:
/// a replica paused past its lease may still believe it leads for a moment, so the work it
/// gates keeps its compare-and-swap preconditions.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// Always leading (a store no other process shares).
    pub fn always() -> Leadership {
        // The sender goes at once: the value never changes.
        Leadership(watch::channel(true).1)
    }

    /// Following `leading`, which the election sets.
    pub fn new(leading: watch::Receiver<bool>) -> Leadership {
        Leadership(leading)
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once this replica leads: at once when it does now.
    pub async fn acquired(&mut self) {
        self.until(true).await
    }

    /// Resolves once this replica no longer leads: at once when it does not now.
    pub async fn lost(&mut self) {
        self.until(false).await
    }

    async fn until(&mut self, leading: bool) {
        if self.0.wait_for(|l| *l == leading).await.is_err() {
            // The election is over (the store shut down, or it never changes): never.
            std::future::pending::<()>().await
        }
    }
}
