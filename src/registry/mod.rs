pub mod meta;
pub mod selector;

// STAND-IN (shell branch): replaced by the real registry at merge. It only holds the store open,
// so the data-directory lock (a second process fails clearly) is real.
/// Stand-in for the registry: keeps the store open.
pub struct Registry {
    _store: crate::store::SledStore,
}

impl Registry {
    /// Stand-in: opens the sled store in `data_dir`.
    pub fn open(data_dir: &std::path::Path) -> Result<Registry, crate::store::StoreError> {
        Ok(Registry {
            _store: crate::store::SledStore::open(data_dir, 10_000)?,
        })
    }
}
