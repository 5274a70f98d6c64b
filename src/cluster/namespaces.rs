//! NamespaceLifecycle for our namespaced kind: no create in a namespace that does not exist or
//! is being deleted, so the namespace controller's cleanup cannot race new claims.
//!
//! As the admission plugin in kube-apiserver: answers come from a watch-fed cache; a namespace
//! missing from the cache is looked up live (it may have been created a moment ago).
use crate::error::ApiError;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};

#[derive(Clone)]
pub struct NamespaceLifecycle {
    api: Api<Namespace>,
    cache: Store<Namespace>,
}

impl NamespaceLifecycle {
    /// Start the namespace watch in the background.
    pub fn start(client: kube::Client) -> Self {
        let api: Api<Namespace> = Api::all(client);
        let (cache, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!("watching namespaces: {e}");
                }
            }
        });
        NamespaceLifecycle { api, cache }
    }

    /// `Ok` if objects may be created in `namespace` now; 404 if it does not exist, 403 if it
    /// is terminating.
    pub async fn admit_create(
        &self,
        resource: &str,
        name: &str,
        namespace: &str,
    ) -> Result<(), ApiError> {
        let ns = match self.cache.get(&ObjectRef::new(namespace)) {
            Some(ns) => Some((*ns).clone()),
            None => self.api.get_opt(namespace).await.map_err(|e| {
                ApiError::Internal(format!("looking up namespace {namespace}: {e}"))
            })?,
        };
        let Some(ns) = ns else {
            return Err(ApiError::NotFound(crate::error::Subject {
                kind: "namespaces".into(),
                group: String::new(),
                name: namespace.into(),
            }));
        };
        let terminating = ns.metadata.deletion_timestamp.is_some()
            || ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating");
        if terminating {
            return Err(ApiError::Forbidden(format!(
                "{resource}.{group} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                group = crate::api::GROUP
            )));
        }
        Ok(())
    }
}
