//! What this process's indexes are known to include, so that each commit carries guards
//! ([`Op::Guard`](crate::store::Op::Guard)) that fail it when another replica changed what
//! it decided from. On a store with a single writer the commits carry none.
use crate::store::{ObjectKey, Revision, GUARDS};
use std::collections::{BTreeSet, HashMap};

/// The guard of one parent's children (and of its exclusions and reserve, which allocation
/// reads too): every commit that takes or frees a block of `parent`, or changes or deletes
/// `parent` itself, bumps it.
pub fn pool(parent: &str) -> ObjectKey {
    ObjectKey::new(GUARDS, "pool", parent)
}

/// The guard of the roots of one address space (`None`: the shared one), which may not overlap.
pub fn roots(space: Option<&str>) -> ObjectKey {
    ObjectKey::new(GUARDS, "roots", space.unwrap_or_default())
}

pub struct Guards {
    /// Every stored change up to this revision is in the indexes (see `replay.rs`).
    applied: Revision,
    /// Guards this process bumped after `applied`: what each stands for is exact as of that
    /// commit, since its guard check proved nobody changed it in between.
    own: HashMap<ObjectKey, Revision>,
    /// This process's commits the replay has not passed yet: their changes are in the indexes
    /// already, so the replay skips their events.
    own_commits: BTreeSet<Revision>,
    progress: tokio::sync::watch::Sender<Revision>,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            applied: 0,
            own: HashMap::new(),
            own_commits: BTreeSet::new(),
            progress: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Guards {
    /// The revision a commit deciding from the indexes now may claim for `guard`: nothing
    /// changed what it stands for after it, as far as this process knows.
    pub fn at_most(&self, guard: &ObjectKey) -> Revision {
        self.own.get(guard).copied().unwrap_or(0).max(self.applied)
    }

    /// A commit of this process applied at `revision`, bumping `guards`.
    pub fn committed<'a>(
        &mut self,
        revision: Revision,
        guards: impl IntoIterator<Item = &'a ObjectKey>,
    ) {
        for guard in guards {
            self.own.insert(guard.clone(), revision);
        }
        if revision > self.applied {
            self.own_commits.insert(revision);
        }
    }

    /// Whether the change at `revision` is one of this process's own commits.
    pub fn is_own(&self, revision: Revision) -> bool {
        self.own_commits.contains(&revision)
    }

    /// Every change up to `revision` is in the indexes.
    pub fn advance(&mut self, revision: Revision) {
        if revision <= self.applied {
            return;
        }
        self.applied = revision;
        self.own.retain(|_, r| *r > revision);
        self.own_commits = self.own_commits.split_off(&(revision + 1));
        self.progress.send_replace(revision);
    }

    /// The indexes were rebuilt from a list at `revision`: what was known before is void.
    pub fn reset(&mut self, revision: Revision) {
        self.own.clear();
        self.own_commits.clear();
        self.applied = revision;
        self.progress.send_replace(revision);
    }

    pub fn applied(&self) -> Revision {
        self.applied
    }

    /// Follows [`Guards::applied`].
    pub fn progress(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.progress.subscribe()
    }
}
