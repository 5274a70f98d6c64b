//! Lists answered from the allocation index instead of a scan: `spec.prefix.contains`.
use super::generic::{
    decode_continue, encode_continue, list_identity, matches_list, ContinueToken,
};
use super::selector::contains_requirement;
use super::{Kind, ListOptions, ObjectList, Registry};
use crate::api::IPPrefix;
use crate::error::{ApiError, ApiResult};

impl Registry {
    /// A list as [`Registry::list`] answers it, but a list of IPPrefixes selected by
    /// `spec.prefix.contains` reads only the containing chain from the index (root first, one
    /// chain per address space), in time independent of how many prefixes exist. Its pages
    /// follow the chain; a continue token names the last item given.
    pub async fn list_indexed<K: Kind>(
        &self,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<ObjectList<K>> {
        let wanted = contains_requirement(&opts.field_selector)
            .filter(|_| K::RESOURCE == <IPPrefix as Kind>::RESOURCE);
        let Some(wanted) = wanted else {
            return self.list(namespace, opts).await;
        };
        self.ensure_available()?;
        let identity = list_identity(K::RESOURCE, namespace, opts);
        let (rv, after) = match opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            Some(token) => {
                let t = decode_continue(token)?;
                if t.list.as_deref() != Some(identity.as_str()) {
                    return Err(ApiError::BadRequest(format!(
                        "continue token {token:?} belongs to another list (another resource, namespace or selector); repeat the list it came from, or start a new list without continue"
                    )));
                }
                (t.rv, Some(t.start))
            }
            None => (self.store().revision(), None),
        };
        let chain = self.lock().await.containing_chain(wanted);
        // After the last item given. Gone since: it had no children then (a prefix with
        // children cannot go), so nothing after it is left either.
        let skip = match &after {
            Some(last) => chain
                .iter()
                .position(|n| n == last)
                .map_or(chain.len(), |i| i + 1),
            None => 0,
        };
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut more = false;
        for name in &chain[skip..] {
            // Gone since the index was read: a list of the latest state leaves it out.
            let obj = match self.get::<K>("", name).await {
                Ok(obj) => obj,
                Err(ApiError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if !matches_list(&obj, opts) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(obj);
        }
        let continue_token = match (more, items.last()) {
            (true, Some(last)) => Some(encode_continue(&ContinueToken {
                rv,
                start: last.meta().name.clone().unwrap_or_default(),
                list: Some(identity),
            })),
            _ => None,
        };
        Ok(ObjectList {
            items,
            resource_version: rv.to_string(),
            continue_token,
        })
    }
}
