//! The pipeline every kind goes through, in a fixed order (as k8s.io/apiserver's registry):
//! metadata → defaults → validation → transaction (kind hooks: allocation, related objects) →
//! one atomic commit → wait for durability → respond.
use super::changes::{ReportChanges, ServerChange};
use super::codec;
use super::kind::{Kind, Removal};
use super::managed_fields::{self, FieldManager, Operation, Scope};
use super::meta;
use super::selector::{self, FieldRequirement};
use super::state::State;
use super::txn::{store_error, Stored, Txn};
use crate::api::PREFIX_IN_USE_FINALIZER;
use crate::error::{ApiError, ApiResult};
use crate::store::{Precondition, ReadAt, Revision, Store, StoreError};
use base64::Engine;
use kube::core::Selector;
use std::sync::Arc;

/// A cheap-to-clone handle to the API semantics over one store.
#[derive(Clone)]
pub struct Registry {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn Store>,
    /// Serializes every read-decide-write step (allocation decisions and the commit recording
    /// them); see [`Registry::lock`]. Never held across the fsync wait, so concurrent creates
    /// share one flush. One lock, not one per parent: held ~13 µs at the median per write, it
    /// admits more writes than the store's single writer thread commits, and the rules that
    /// span prefixes (a claim choosing among parents by selector, a prefix that may not be
    /// deleted while it has children, roots that must not overlap) stay one step, with no lock
    /// order to get wrong.
    pub(super) state: tokio::sync::Mutex<State>,
    /// How far the indexes have followed the store (`Guards::applied`).
    progress: tokio::sync::watch::Receiver<Revision>,
    /// Other processes' changes waiting to be applied to the indexes (see `follow.rs`).
    pub(super) remote:
        std::sync::Mutex<std::collections::VecDeque<Vec<Arc<crate::store::StoreEvent>>>>,
    /// Where changes the server makes on its own go ([`Registry::report_server_changes`]).
    report: std::sync::OnceLock<ReportChanges>,
    /// How creates and deletes reach the leader (see `forward.rs`).
    pub(super) forward: std::sync::OnceLock<Arc<dyn super::forward::ForwardWrites>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

#[derive(Debug, Default, Clone)]
pub struct ListOptions {
    pub label_selector: Option<Selector>,
    pub field_selector: Vec<FieldRequirement>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// `resourceVersion` N of a list that is not `Exact`: any state at or after N will do (0:
    /// whatever is at hand), so a store with a cache answers from it at once.
    pub not_older_than: Option<crate::store::Revision>,
}

#[derive(Debug)]
pub struct ObjectList<K> {
    pub items: Vec<K>,
    pub resource_version: String,
    pub continue_token: Option<String>,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PropagationPolicy {
    Orphan,
    Background,
    Foreground,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeleteOptions {
    pub preconditions: Preconditions,
    pub propagation_policy: Option<PropagationPolicy>,
    pub dry_run: bool,
}

/// The continue token: where the next page starts, the revision the list began at, and which
/// list it continues (a digest of resource, namespace and selectors).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ContinueToken {
    pub rv: u64,
    pub start: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
}

/// What a continue token is valid for: the next page of the same list only.
pub(super) fn list_identity(resource: &str, namespace: Option<&str>, opts: &ListOptions) -> String {
    use sha2::Digest;
    let labels = opts
        .label_selector
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let whole = format!(
        "{resource}\n{}\n{labels}\n{:?}",
        namespace.unwrap_or("*"),
        opts.field_selector
    );
    sha2::Sha256::digest(whole.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Registry {
    /// The API over `store` (whichever backend `main` chose), with the allocation indexes
    /// rebuilt from it.
    pub async fn new(store: Arc<dyn Store>) -> Result<Registry, StoreError> {
        let (state, revision) = super::follow::load_indexes(&*store).await?;
        let progress = state.guards.progress();
        let registry = Registry {
            inner: Arc::new(Inner {
                store,
                state: tokio::sync::Mutex::new(state),
                progress,
                remote: Default::default(),
                report: std::sync::OnceLock::new(),
                forward: std::sync::OnceLock::new(),
            }),
        };
        registry.lock().await.guards.reset(revision);
        if registry.inner.store.shared() {
            tokio::spawn(super::follow::follow(
                Arc::downgrade(&registry.inner),
                revision,
            ));
        }
        Ok(registry)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Send what the server changes on its own (see [`ServerChange`]) to `report`, from
    /// then on. Set once, before serving; a second call is ignored.
    pub fn report_server_changes(&self, report: ReportChanges) {
        let _ = self.inner.report.set(report);
    }

    /// Hand an applied commit's own changes to whoever listens.
    pub(super) fn report(&self, changes: Vec<ServerChange>) {
        if let (false, Some(report)) = (changes.is_empty(), self.inner.report.get()) {
            report(changes);
        }
    }

    /// Wait for a write to be durable and stamp its resourceVersion into `obj`.
    async fn finish<K: Kind>(
        &self,
        mut obj: K,
        namespace: &str,
        name: &str,
        mut commit: super::txn::TxnCommit,
    ) -> ApiResult<K> {
        self.settle(&mut commit).await?;
        if let Some(rv) = commit.revisions.get(&Txn::key::<K>(namespace, name)) {
            obj.meta_mut().resource_version = Some(rv.to_string());
        }
        Ok(obj)
    }

    /// Wait until `commit` is durable; one that joined the open group first queues for the
    /// writer lock again: whoever queued meanwhile joined the group, and the first member back
    /// commits it (see `group.rs`). Called without the lock.
    pub(super) async fn settle(&self, commit: &mut super::txn::TxnCommit) -> ApiResult<()> {
        if commit.awaits_group() {
            let mut state = self.lock().await;
            if commit.awaits_group() {
                super::group::commit(&mut state, &*self.inner.store).await;
            }
        }
        commit.wait_durable().await
    }

    /// Run a write, and again while it fails because another replica changed an index it
    /// decided from (a failed guard, `ApiError::IndexBehind`), each time once this replica's
    /// indexes include that change: as kube-apiserver's GuaranteedUpdate retries a conflict
    /// on fresh data. Only a shared store fails so.
    async fn retry_behind<T, W>(&self, mut write: impl FnMut() -> W) -> ApiResult<T>
    where
        W: std::future::Future<Output = ApiResult<T>>,
    {
        /// Each retry follows a change another replica committed to the same parent, so
        /// running out means a parent contended beyond reason, not a stuck replica.
        const ATTEMPTS: usize = 64;
        let mut attempts = 0;
        let mut exhausted_at_latest = false;
        loop {
            match write().await {
                Err(ApiError::IndexBehind { revision, .. }) if attempts < ATTEMPTS => {
                    attempts += 1;
                    self.caught_up(revision).await?;
                }
                // Exhausted only as of every write acknowledged before: a block another
                // replica freed a moment ago may not be in this replica's index yet (as a
                // consistent read waits for the watch cache).
                Err(ApiError::Exhausted { .. })
                    if !exhausted_at_latest && self.inner.store.shared() =>
                {
                    exhausted_at_latest = true;
                    // Every change to an allocation index bumps a guard (see `guards.rs`).
                    let guards = crate::store::KeyRange {
                        resource: crate::store::GUARDS,
                        namespace: None,
                    };
                    let latest = self
                        .inner
                        .store
                        .newest_in(&guards)
                        .await
                        .map_err(super::txn::store_error)?;
                    // Decide again even when the index is there already: it may have got
                    // there after this create decided.
                    self.caught_up(latest).await?;
                }
                done => return done,
            }
        }
    }

    /// Wait until the indexes include every change up to `revision` (see `follow.rs`).
    async fn caught_up(&self, revision: Revision) -> ApiResult<()> {
        let mut progress = self.inner.progress.clone();
        let wait = async move {
            progress
                .wait_for(|applied| *applied >= revision)
                .await
                .is_ok()
        };
        match tokio::time::timeout(crate::store::etcd::REQUEST_TIMEOUT, wait).await {
            Ok(true) => Ok(()),
            _ => Err(ApiError::ServiceUnavailable(format!(
                "this replica has not caught up with the store's revision {revision}; try again"
            ))),
        }
    }

    /// One writer at a time (allocation decisions and their commit are one step). An async
    /// lock: a request waiting for it yields its worker thread to other requests' parsing,
    /// encoding and TLS instead of putting the thread to sleep. A panic inside a transaction
    /// runs its undo log on unwind (Txn's Drop), so the state stays consistent.
    pub(super) async fn lock(&self) -> tokio::sync::MutexGuard<'_, State> {
        let mut state = self.inner.state.lock().await;
        if self.inner.store.shared()
            && super::follow::catch_up(&self.inner, &mut state)
                .await
                .is_err()
        {
            super::follow::reload(&self.inner, &mut state).await;
        }
        state
    }

    /// The writer lock, for a caller that will commit under it. From the moment it queues
    /// until it lets go, the store knows a commit is on its way and may hold a group's fsync
    /// for it ([`crate::store::Store::intend_commit`]).
    pub(super) async fn lock_to_commit(&self) -> Writer<'_> {
        let intent = self.inner.store.intend_commit();
        let queued = std::time::Instant::now();
        let state = self.lock().await;
        crate::metrics::global()
            .writer_lock_wait
            .observe(queued.elapsed().as_secs_f64());
        Writer {
            state,
            _intent: intent,
        }
    }

    /// Whether the store has failed (a failed fsync): every API request is answered 503 from
    /// then on, and the health checks fail, until a restart.
    pub fn store_failed(&self) -> bool {
        self.inner.store.failure().is_some()
    }

    /// Whether the store can serve now (on etcd: etcd answers), for `/readyz`.
    pub fn store_ready(&self) -> bool {
        self.inner.store.ready().is_ok()
    }

    /// 503 once the store has failed: its memory may hold writes that never reached the disk,
    /// and serving them (a retried create answered AlreadyExists, a GET of a lost object) would
    /// make clients act on state a restart takes back.
    pub(super) fn ensure_available(&self) -> ApiResult<()> {
        match self.inner.store.failure() {
            Some(why) => Err(ApiError::ServiceUnavailable(format!(
                "storage is unavailable: {why}"
            ))),
            None => Ok(()),
        }
    }

    pub async fn get<K: Kind>(&self, namespace: &str, name: &str) -> ApiResult<K> {
        self.get_at(namespace, name, None).await
    }

    /// A get with the API's `resourceVersion`: N means any state not older than N (0:
    /// whatever is at hand, from a cache at once); without one, the latest state.
    pub async fn get_at<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
    ) -> ApiResult<K> {
        let at = match resource_version.filter(|v| !v.is_empty()) {
            Some(rv) => ReadAt::NotOlderThan(rv.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "resourceVersion {rv:?} is not valid: expected a number"
                ))
            })?),
            None => ReadAt::Latest,
        };
        self.ensure_available()?;
        let key = Txn::key::<K>(namespace, name);
        match self
            .inner
            .store
            .get_at(&key, at)
            .await
            .map_err(store_error)?
        {
            Some(v) => codec::decode_stored(&v.value, v.revision),
            None => Err(ApiError::not_found(K::RESOURCE, name)),
        }
    }

    /// `resourceVersion` / `resourceVersionMatch` of a list. The store keeps no history of
    /// object states (only of events), so every list is served from the latest state:
    /// - unset, `"0"`, or `NotOlderThan` N with N ≤ the current revision: served (latest);
    /// - N above the current revision: 504 `Timeout` ("Too large resource version");
    /// - `Exact` N: served only when N is the current revision, else 410 `Expired`.
    pub fn check_list_version(
        &self,
        resource_version: Option<&str>,
        version_match: Option<&str>,
        continue_token: Option<&str>,
    ) -> ApiResult<()> {
        let rv = resource_version.filter(|v| !v.is_empty());
        let version_match = version_match.filter(|v| !v.is_empty());
        let continuing = continue_token.is_some_and(|c| !c.is_empty());
        if continuing && version_match.is_some() {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch is forbidden when continue is provided".into(),
            ));
        }
        if continuing && rv.is_some_and(|v| v != "0") {
            return Err(ApiError::BadRequest(
                "specifying resource version is not allowed when using continue".into(),
            ));
        }
        let Some(rv) = rv else {
            return match version_match {
                Some(_) => Err(ApiError::BadRequest(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
                )),
                None => Ok(()),
            };
        };
        let n: u64 = rv.parse().map_err(|_| {
            ApiError::BadRequest(format!(
                "resourceVersion {rv:?} is not valid: expected a number"
            ))
        })?;
        let current = self.inner.store.revision();
        match version_match {
            None | Some("NotOlderThan") if n <= current => Ok(()),
            None | Some("NotOlderThan") => Err(ApiError::Timeout(format!(
                "Too large resource version: {n}, current resource version: {current}"
            ))),
            Some("Exact") if n == 0 => Err(ApiError::BadRequest(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"".into(),
            )),
            Some("Exact") if n == current => Ok(()),
            Some("Exact") => Err(ApiError::Expired(format!(
                "resourceVersion {n} is not the current revision {current}: lists are served from the latest state only; list with resourceVersionMatch=NotOlderThan"
            ))),
            Some(other) => Err(ApiError::BadRequest(format!(
                "resourceVersionMatch must be \"NotOlderThan\" or \"Exact\", not {other:?}"
            ))),
        }
    }

    pub async fn create<K: Kind>(&self, namespace: &str, obj: K, dry_run: bool) -> ApiResult<K> {
        self.create_with_access(namespace, obj, dry_run, None).await
    }

    /// Create, recording `manager` in managedFields (an Update owns every field it set; an
    /// Apply's managedFields were computed by the caller and are kept).
    pub async fn create_managed<K: Kind>(
        &self,
        namespace: &str,
        obj: K,
        dry_run: bool,
        allowed_parents: Option<std::collections::HashSet<String>>,
        manager: &FieldManager,
    ) -> ApiResult<K> {
        self.create_inner(namespace, obj, dry_run, allowed_parents, Some(manager))
            .await
    }

    /// Create, allowing a claim to allocate only from `allowed_parents` (the IPPrefixes the
    /// caller may `use`; `None`: no restriction). Computed by the caller before the write lock,
    /// since asking the authorizer is I/O.
    pub async fn create_with_access<K: Kind>(
        &self,
        namespace: &str,
        obj: K,
        dry_run: bool,
        allowed_parents: Option<std::collections::HashSet<String>>,
    ) -> ApiResult<K> {
        self.create_inner(namespace, obj, dry_run, allowed_parents, None)
            .await
    }

    async fn create_inner<K: Kind>(
        &self,
        namespace: &str,
        obj: K,
        dry_run: bool,
        allowed_parents: Option<std::collections::HashSet<String>>,
        manager: Option<&FieldManager>,
    ) -> ApiResult<K> {
        if !self.inner.store.shared() {
            return (self.create_here(namespace, obj, dry_run, allowed_parents, manager)).await;
        }
        let (this, namespace, manager) = (self.clone(), namespace.to_string(), manager.cloned());
        self.uncancelled(async move {
            let manager = manager.as_ref();
            if let Some(created) = this
                .create_at_leader(&namespace, &obj, dry_run, &allowed_parents, manager)
                .await
            {
                return created;
            }
            this.create_here(&namespace, obj, dry_run, allowed_parents, manager)
                .await
        })
        .await
    }

    /// Run `write` to its end even when the request that started it is dropped (its client
    /// went away). For shared stores only: a write holding the writer lock may be committing
    /// the open group (`group.rs`), whose other members wait for their answers and whose index
    /// changes only that commit undoes. Dropped halfway, it left them unanswered (500) and
    /// their blocks allocated in the index only. (sled commits each write alone, and a
    /// transaction dropped before it applies undoes itself: its writes skip the task.)
    async fn uncancelled<T: Send + 'static>(
        &self,
        write: impl std::future::Future<Output = ApiResult<T>> + Send + 'static,
    ) -> ApiResult<T> {
        tokio::spawn(write)
            .await
            .unwrap_or_else(|e| Err(ApiError::Internal(format!("a write ended early: {e}"))))
    }

    /// Decide and commit a create in this replica.
    pub(super) async fn create_here<K: Kind>(
        &self,
        namespace: &str,
        obj: K,
        dry_run: bool,
        allowed_parents: Option<std::collections::HashSet<String>>,
        manager: Option<&FieldManager>,
    ) -> ApiResult<K> {
        if !self.inner.store.shared() {
            return (self.create_once(namespace, obj, dry_run, allowed_parents, manager)).await;
        }
        self.retry_behind(|| {
            self.create_once(
                namespace,
                obj.clone(),
                dry_run,
                allowed_parents.clone(),
                manager,
            )
        })
        .await
    }

    async fn create_once<K: Kind>(
        &self,
        namespace: &str,
        mut obj: K,
        dry_run: bool,
        allowed_parents: Option<std::collections::HashSet<String>>,
        manager: Option<&FieldManager>,
    ) -> ApiResult<K> {
        self.ensure_available()?;
        let meta = obj.meta_mut();
        if K::NAMESPACED {
            match meta.namespace.as_deref() {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(ApiError::BadRequest(format!(
                        "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({namespace})"
                    )))
                }
                _ => meta.namespace = Some(namespace.to_string()),
            }
        }
        let generate = meta.name.as_deref().is_none_or(str::is_empty)
            && meta.generate_name.as_deref().is_some_and(|g| !g.is_empty());
        if generate {
            meta.name = Some(meta::generate_name(
                meta.generate_name.as_deref().unwrap_or_default(),
            ));
        }
        meta::prepare_for_create(meta);
        obj.default_spec();
        obj.default_on_create();
        let mut errs = Vec::new();
        meta::validate_object_meta(obj.meta(), K::NAMESPACED, &mut errs);
        meta::validate_new_finalizers(obj.meta(), None, &mut errs);
        errs.extend(obj.validate());
        if !errs.is_empty() {
            return Err(ApiError::invalid(
                K::KIND,
                obj.meta().name.as_deref().unwrap_or_default(),
                errs,
            ));
        }
        if let Some(fm) = manager.filter(|m| m.operation == Operation::Update) {
            let value = codec::to_value(&obj)?;
            let entries = managed_fields::record_update(
                Vec::new(),
                None,
                &value,
                fm,
                Scope::Main,
                &K::api_version(&()),
            );
            obj.meta_mut().managed_fields = Some(entries).filter(|e| !e.is_empty());
        }
        let name = obj.meta().name.clone().unwrap_or_default();
        let commit = {
            let mut state = self.lock_to_commit().await;
            let mut tx = Txn::new(&*self.inner.store, &mut state);
            tx.allowed_parents = allowed_parents;
            // The name is checked by the commit, not read first (a store lookup under the lock
            // on every create); a create that fails for another reason still answers
            // AlreadyExists when the name is taken, as Kubernetes does.
            let taken = name.clone();
            let created = async {
                obj.on_create(&mut tx).await?;
                tx.put_new(&obj, move || ApiError::already_exists(K::RESOURCE, &taken))?;
                tx.commit(dry_run).await
            }
            .await;
            match created {
                Ok(commit) => commit,
                Err(e) => return Err(self.already_exists_or::<K>(namespace, &name, e).await),
            }
        };
        self.finish(obj, namespace, &name, commit).await
    }

    /// `e`, or AlreadyExists if the object's name is taken: what a failed create answers.
    /// Called under the writer lock, once the transaction is undone.
    async fn already_exists_or<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        e: ApiError,
    ) -> ApiError {
        if matches!(
            e,
            ApiError::AlreadyExists(_) | ApiError::ServiceUnavailable(_) | ApiError::Internal(_)
        ) {
            return e;
        }
        match self.inner.store.get(&Txn::key::<K>(namespace, name)).await {
            Ok(Some(_)) => ApiError::already_exists(K::RESOURCE, name),
            _ => e,
        }
    }

    /// Replace an object (PUT, or the result of a patch). `expected_revision` is a precondition
    /// from the caller (a patch's read); the body's own resourceVersion is one too.
    pub async fn update<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        new: K,
        sub: Subresource,
        dry_run: bool,
    ) -> ApiResult<K> {
        self.update_managed(namespace, name, new, sub, dry_run, None)
            .await
    }

    /// [`Registry::update`], recording `manager`: an Update owns the fields it changed and takes
    /// them from other managers; an Apply's managedFields were computed by the caller.
    pub async fn update_managed<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        new: K,
        sub: Subresource,
        dry_run: bool,
        manager: Option<&FieldManager>,
    ) -> ApiResult<K> {
        if !self.inner.store.shared() {
            return (self.update_once(namespace, name, new, sub, dry_run, manager)).await;
        }
        let this = self.clone();
        let (namespace, name, manager) =
            (namespace.to_string(), name.to_string(), manager.cloned());
        self.uncancelled(async move {
            let manager = manager.as_ref();
            this.retry_behind(|| {
                this.update_once(&namespace, &name, new.clone(), sub, dry_run, manager)
            })
            .await
        })
        .await
    }

    async fn update_once<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        mut new: K,
        sub: Subresource,
        dry_run: bool,
        manager: Option<&FieldManager>,
    ) -> ApiResult<K> {
        self.ensure_available()?;
        let body_name = new.meta().name.clone().unwrap_or_default();
        if body_name != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if K::NAMESPACED {
            let meta = new.meta_mut();
            match meta.namespace.as_deref() {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(ApiError::BadRequest(format!(
                        "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({namespace})"
                    )))
                }
                _ => meta.namespace = Some(namespace.to_string()),
            }
        }
        let commit = {
            let mut state = self.lock_to_commit().await;
            let mut tx = Txn::new(&*self.inner.store, &mut state);
            let Some(old) = tx.get::<K>(namespace, name).await? else {
                return Err(ApiError::not_found(K::RESOURCE, name));
            };
            if let Some(rv) = new
                .meta()
                .resource_version
                .as_deref()
                .filter(|rv| !rv.is_empty())
            {
                if rv != old.revision.to_string() {
                    return Err(modified_conflict::<K>(name));
                }
            }
            let old_obj = &old.obj;
            meta::keep_system_fields(new.meta_mut(), old_obj.meta());
            match sub {
                Subresource::Main => {
                    new.keep_status_of(old_obj);
                    new.default_spec();
                }
                Subresource::Status => {
                    // Status writes change status only: metadata and spec stay as stored.
                    let status_meta = new.meta().clone();
                    *new.meta_mut() = old_obj.meta().clone();
                    new.meta_mut().managed_fields = status_meta.managed_fields;
                    new.keep_spec_of(old_obj);
                }
            }
            if !new.same_spec(old_obj) {
                let meta = new.meta_mut();
                meta.generation = Some(meta.generation.unwrap_or(1) + 1);
            }
            if let Some(fm) = manager.filter(|m| m.operation == Operation::Update) {
                record_update_fields(&mut new, old_obj, fm, sub)?;
            }
            let mut errs = Vec::new();
            meta::validate_object_meta(new.meta(), K::NAMESPACED, &mut errs);
            meta::validate_new_finalizers(new.meta(), Some(old_obj.meta()), &mut errs);
            errs.extend(new.validate());
            errs.extend(new.validate_update(old_obj));
            if !errs.is_empty() {
                return Err(ApiError::invalid(K::KIND, name, errs));
            }
            new.meta_mut().resource_version = old_obj.meta().resource_version.clone();
            if new == *old_obj {
                // Nothing changed: no write, no new resourceVersion (what `kubectl apply` relies on).
                return Ok(old.obj);
            }
            new.meta_mut().resource_version = None;
            let last_user_finalizer_gone = meta::user_finalizers(new.meta()).is_empty()
                && (!meta::user_finalizers(old_obj.meta()).is_empty()
                    || new.meta().finalizers.as_ref().is_none_or(Vec::is_empty));
            if new.meta().deletion_timestamp.is_some() && last_user_finalizer_gone {
                // The last finalizer is gone: the object goes now (or waits, in use).
                let (obj, _) = remove_or_keep(&mut tx, new, old.revision).await?;
                (obj, tx.commit(dry_run).await?)
            } else {
                new.on_update(old_obj, &mut tx).await?;
                tx.put(&new, Precondition::Revision(old.revision))?;
                (new, tx.commit(dry_run).await?)
            }
        };
        let (obj, mut commit) = commit;
        let changes = std::mem::take(&mut commit.server_changes);
        let updated = self.finish(obj, namespace, name, commit).await?;
        self.report(changes);
        Ok(updated)
    }

    /// Delete: honours preconditions and finalizers; returns the object and whether it is gone.
    pub async fn delete<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<(K, bool)> {
        if !self.inner.store.shared() {
            return self.delete_here(namespace, name, opts).await;
        }
        let this = self.clone();
        let (namespace, name, opts) = (namespace.to_string(), name.to_string(), opts.clone());
        self.uncancelled(async move {
            if let Some(deleted) = this.delete_at_leader(&namespace, &name, &opts).await {
                return deleted;
            }
            this.delete_here(&namespace, &name, &opts).await
        })
        .await
    }

    /// Decide and commit a delete in this replica.
    pub(super) async fn delete_here<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<(K, bool)> {
        self.retry_behind(|| self.delete_once(namespace, name, opts))
            .await
    }

    async fn delete_once<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<(K, bool)> {
        self.ensure_available()?;
        let (obj, gone, mut commit) = {
            let mut state = self.lock_to_commit().await;
            let mut tx = Txn::new(&*self.inner.store, &mut state);
            let Some(old) = tx.get::<K>(namespace, name).await? else {
                return Err(ApiError::not_found(K::RESOURCE, name));
            };
            check_preconditions::<K>(&old, &opts.preconditions, name)?;
            old.obj.check_delete(&mut tx).await?;
            let mut obj = old.obj.clone();
            // The server's in-use finalizer is decided afresh below (`remove_or_keep`): a
            // claim with nothing bound below never waits behind it.
            let mut finalizers = meta::user_finalizers(obj.meta());
            let policy_finalizer = match opts.propagation_policy {
                Some(PropagationPolicy::Orphan) => Some("orphan"),
                Some(PropagationPolicy::Foreground) => Some("foregroundDeletion"),
                _ => None,
            };
            if let Some(f) = policy_finalizer {
                if !finalizers.iter().any(|x| x == f) {
                    finalizers.push(f.to_string());
                }
            }
            if obj.meta().deletion_timestamp.is_some() && finalizers.is_empty() {
                // Waiting behind the in-use finalizer only: check again whether it must.
                let (obj, gone) = remove_or_keep(&mut tx, obj, old.revision).await?;
                if !gone && obj == old.obj {
                    return Ok((old.obj, false));
                }
                (obj, gone, tx.commit(opts.dry_run).await?)
            } else if obj.meta().deletion_timestamp.is_some() {
                // Already terminating: only a new propagation finalizer changes anything.
                if finalizers == meta::user_finalizers(obj.meta()) {
                    return Ok((old.obj, false));
                }
                let in_use = obj
                    .meta()
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == PREFIX_IN_USE_FINALIZER);
                if in_use {
                    finalizers.push(PREFIX_IN_USE_FINALIZER.to_string());
                }
                obj.meta_mut().finalizers = Some(finalizers);
                obj.meta_mut().resource_version = None;
                tx.put(&obj, Precondition::Revision(old.revision))?;
                (obj, false, tx.commit(opts.dry_run).await?)
            } else if !finalizers.is_empty() {
                let meta = obj.meta_mut();
                meta.finalizers = Some(finalizers);
                meta.deletion_timestamp = Some(meta::now());
                meta.deletion_grace_period_seconds = Some(0);
                meta.resource_version = None;
                tx.put(&obj, Precondition::Revision(old.revision))?;
                (obj, false, tx.commit(opts.dry_run).await?)
            } else {
                let (obj, gone) = remove_or_keep(&mut tx, obj, old.revision).await?;
                (obj, gone, tx.commit(opts.dry_run).await?)
            }
        };
        let key = Txn::key::<K>(namespace, name);
        let revision = commit.revisions.get(&key).copied();
        commit.wait_durable().await?;
        self.report(std::mem::take(&mut commit.server_changes));
        let mut obj = obj;
        if let Some(rv) = revision {
            obj.meta_mut().resource_version = Some(rv.to_string());
        }
        Ok((obj, gone))
    }

    /// Delete every object matching `list` (each in its own transaction).
    pub async fn delete_collection<K: Kind>(
        &self,
        namespace: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> ApiResult<ObjectList<K>> {
        let mut list = list.clone();
        list.limit = None;
        list.continue_token = None;
        let found = self.list::<K>(namespace, &list).await?;
        let mut deleted = Vec::new();
        for obj in found.items {
            let ns = obj.meta().namespace.clone().unwrap_or_default();
            let name = obj.meta().name.clone().unwrap_or_default();
            match self.delete::<K>(&ns, &name, opts).await {
                Ok((obj, _)) => deleted.push(obj),
                Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ObjectList {
            items: deleted,
            resource_version: found.resource_version,
            continue_token: None,
        })
    }
}

/// managedFields after an Update of `old` to `new` by `fm`. The stored managedFields are the
/// base unless the client sent others on purpose (`[{}]` clears them, as in Kubernetes).
fn record_update_fields<K: Kind>(
    new: &mut K,
    old: &K,
    fm: &FieldManager,
    sub: Subresource,
) -> ApiResult<()> {
    let scope = match sub {
        Subresource::Main => Scope::Main,
        Subresource::Status => Scope::Status,
    };
    let base = match new.meta().managed_fields.clone() {
        Some(sent) if Some(&sent) != old.meta().managed_fields.as_ref() => sent,
        _ => old.meta().managed_fields.clone().unwrap_or_default(),
    };
    let old_value = codec::to_value(old)?;
    let new_value = codec::to_value(new)?;
    let entries = managed_fields::record_update(
        base,
        Some(&old_value),
        &new_value,
        fm,
        scope,
        &K::api_version(&()),
    );
    new.meta_mut().managed_fields = Some(entries).filter(|e| !e.is_empty());
    Ok(())
}

/// Final removal of `obj` (no finalizers left): the kind releases what it holds in the same
/// transaction, or keeps the object terminating behind the server's in-use finalizer.
async fn remove_or_keep<K: Kind>(
    tx: &mut Txn<'_>,
    mut obj: K,
    revision: u64,
) -> ApiResult<(K, bool)> {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let before = obj.clone();
    match obj.on_remove(tx).await? {
        Removal::Remove => {
            tx.delete::<K>(&ns, &name, Precondition::Revision(revision));
            Ok((obj, true))
        }
        Removal::KeepInUse => {
            let meta = obj.meta_mut();
            meta.deletion_timestamp.get_or_insert_with(meta::now);
            meta.deletion_grace_period_seconds = Some(0);
            let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
            if !finalizers.iter().any(|f| f == PREFIX_IN_USE_FINALIZER) {
                finalizers.push(PREFIX_IN_USE_FINALIZER.to_string());
            }
            if obj == before && before.meta().resource_version.is_some() {
                // Already waiting, for the same reason: nothing to write.
                return Ok((obj, false));
            }
            let meta = obj.meta_mut();
            meta.resource_version = None;
            tx.put(&obj, Precondition::Revision(revision))?;
            Ok((obj, false))
        }
    }
}

/// Wait for durability and stamp the object's new resourceVersion.
fn modified_conflict<K: Kind>(name: &str) -> ApiError {
    ApiError::conflict(
        K::RESOURCE,
        name,
        format!(
            "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            K::RESOURCE,
            crate::api::GROUP
        ),
    )
}

fn check_preconditions<K: Kind>(old: &Stored<K>, pre: &Preconditions, name: &str) -> ApiResult<()> {
    if let Some(uid) = pre.uid.as_deref() {
        let actual = old.obj.meta().uid.as_deref().unwrap_or_default();
        if uid != actual {
            return Err(ApiError::conflict(
                K::RESOURCE,
                name,
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = pre.resource_version.as_deref() {
        if rv != old.revision.to_string() {
            return Err(ApiError::conflict(
                K::RESOURCE,
                name,
                format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    old.revision
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn matches_list<K: Kind>(obj: &K, opts: &ListOptions) -> bool {
    opts.label_selector
        .as_ref()
        .is_none_or(|s| selector::matches(s, obj.meta().labels.as_ref()))
        && selector::fields_match(&opts.field_selector, |f| obj.selectable_field(f))
}

pub(super) fn encode_continue(t: &ContinueToken) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(t).unwrap_or_default())
}

pub(super) fn decode_continue(s: &str) -> ApiResult<ContinueToken> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::BadRequest(format!("continue token {s:?} is not valid")))
}

/// The writer lock, held by a caller that will commit (see [`Registry::lock_to_commit`]).
pub(super) struct Writer<'a> {
    state: tokio::sync::MutexGuard<'a, State>,
    _intent: crate::store::CommitIntent,
}

impl std::ops::Deref for Writer<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}
