//! Lists, read from the store in chunks: a list is written out as it is read, so serving one
//! holds a chunk of objects, not the whole answer.
use super::codec;
use super::generic::{
    decode_continue, encode_continue, list_identity, matches_list, ContinueToken, ListOptions,
    ObjectList, Registry,
};
use super::kind::Kind;
use super::txn::store_error;
use crate::error::{ApiError, ApiResult};
use crate::store::{KeyRange, ObjectKey, ReadAt, StoreError};

/// Objects read from the store at a time (and, for an unpaged list, held at a time).
pub const LIST_CHUNK: usize = 500;

/// kube-apiserver's words for a continue token whose revision is gone.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.";

/// One list (or one page of it), as chunks of at most [`LIST_CHUNK`] items in key order.
///
/// The first chunk of a list is read from the latest state; every later chunk, and every later
/// page, at that chunk's revision: on a store that keeps versions (etcd) the whole list is one
/// snapshot, on sled each chunk sees the latest state and the pages carry the first page's
/// `resourceVersion` (API.md). The first chunk is read when the list is made, so an error that
/// would refuse the list (an expired continue token, a failed store) comes before anything is
/// written.
pub struct ListChunks<K> {
    registry: Registry,
    range: KeyRange,
    opts: ListOptions,
    /// Read when the list was made, not yet handed out.
    first: Option<Vec<K>>,
    /// Where the next chunk starts; `None` once the list is complete.
    next: Option<Option<ObjectKey>>,
    /// Items a paged list may still hand out.
    remaining: Option<usize>,
    /// The state the next chunk reads.
    at: ReadAt,
    /// Continues a page before: a revision gone is the token's fault.
    continued: bool,
    /// Objects after this page, for a page with a continue token of an unfiltered list.
    remaining_item_count: Option<usize>,
    resource_version: String,
    continue_token: Option<String>,
    /// The list's [`list_identity`], for its continue token.
    identity: String,
}

impl Registry {
    /// The objects of `K` in `namespace` (all namespaces: `None`) that `opts` selects, whole.
    /// For internal callers; the API writes [`Registry::list_chunks`] as they come.
    pub async fn list<K: Kind>(
        &self,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<ObjectList<K>> {
        let mut chunks = self.list_chunks::<K>(namespace, opts).await?;
        let mut items = Vec::new();
        while let Some(chunk) = chunks.next_chunk().await? {
            items.extend(chunk);
        }
        Ok(ObjectList {
            items,
            resource_version: chunks.resource_version,
            continue_token: chunks.continue_token,
        })
    }

    /// A list to be read chunk by chunk (see [`ListChunks`]).
    pub async fn list_chunks<K: Kind>(
        &self,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<ListChunks<K>> {
        self.ensure_available()?;
        let range = KeyRange {
            resource: K::RESOURCE,
            namespace: namespace.map(str::to_string),
        };
        let identity = list_identity(K::RESOURCE, namespace, opts);
        let (start_after, list_rv) = match opts.continue_token.as_deref().filter(|t| !t.is_empty())
        {
            Some(token) => {
                let t = decode_continue(token)?;
                if t.list.as_deref().is_some_and(|l| l != identity) {
                    return Err(ApiError::BadRequest(format!(
                        "continue token {token:?} belongs to another list (another resource, namespace or selector); repeat the list it came from, or start a new list without continue"
                    )));
                }
                // A store that keeps versions says itself when the revision is gone.
                if !self.store().keeps_versions() && t.rv < self.store().oldest_watchable() {
                    return Err(ApiError::Expired(CONTINUE_EXPIRED.into()));
                }
                let (ns, name) = t.start.split_once('/').unwrap_or(("", &t.start));
                (Some(ObjectKey::new(K::RESOURCE, ns, name)), Some(t.rv))
            }
            None => (None, None),
        };
        let mut list = ListChunks {
            registry: self.clone(),
            range,
            opts: opts.clone(),
            first: None,
            next: Some(start_after),
            remaining: opts.limit.filter(|l| *l > 0),
            at: match (list_rv, opts.not_older_than) {
                (Some(rv), _) => ReadAt::Revision(rv),
                (None, Some(rv)) => ReadAt::NotOlderThan(rv),
                (None, None) => ReadAt::Latest,
            },
            continued: list_rv.is_some(),
            remaining_item_count: None,
            resource_version: list_rv.map(|rv| rv.to_string()).unwrap_or_default(),
            continue_token: None,
            identity,
        };
        list.first = list.read_chunk().await?;
        Ok(list)
    }
}

impl<K: Kind> ListChunks<K> {
    /// The next chunk, `None` once the list is complete. A store failure part way is an error
    /// the caller can no longer answer with a Status (the list was begun): it ends the body.
    pub async fn next_chunk(&mut self) -> ApiResult<Option<Vec<K>>> {
        match self.first.take() {
            Some(chunk) => Ok(Some(chunk)),
            None => self.read_chunk().await,
        }
    }

    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }

    /// Whether [`ListChunks::continue_token`] is final: always for an unpaged list (it has
    /// none), for a page once its last chunk was read.
    pub fn continue_token_known(&self) -> bool {
        self.remaining.is_none() || self.next.is_none()
    }

    /// Where the next page starts, for a page that did not reach the end.
    pub fn continue_token(&self) -> Option<&str> {
        self.continue_token.as_deref()
    }

    /// How many objects the pages after this one hold, when known: as kube-apiserver, only
    /// for a list that no selector filters, on a store that counts them (etcd). Final with
    /// the continue token.
    pub fn remaining_item_count(&self) -> Option<usize> {
        self.remaining_item_count
    }

    async fn read_chunk(&mut self) -> ApiResult<Option<Vec<K>>> {
        let Some(start_after) = self.next.take() else {
            return Ok(None);
        };
        let limit = self.remaining.map_or(LIST_CHUNK, |r| r.min(LIST_CHUNK));
        let mut decode_error = None;
        let mut decoded = Vec::new();
        let opts = &self.opts;
        let page = self
            .registry
            .store()
            .list(
                &self.range,
                start_after.as_ref(),
                self.at,
                Some(limit),
                &mut |v| match codec::decode_stored::<K>(&v.value, v.revision) {
                    Ok(obj) if matches_list(&obj, opts) => {
                        decoded.push(obj);
                        true
                    }
                    Ok(_) => false,
                    Err(e) => {
                        decode_error.get_or_insert(e);
                        false
                    }
                },
            )
            .await
            .map_err(|e| match e {
                StoreError::Expired { .. } if self.continued => {
                    ApiError::Expired(CONTINUE_EXPIRED.into())
                }
                e => store_error(e),
            })?;
        if let Some(e) = decode_error {
            return Err(e);
        }
        // The filter decoded one item beyond the limit when there are more.
        decoded.truncate(page.items.len());
        if self.resource_version.is_empty() {
            self.resource_version = page.revision.to_string();
        }
        self.at = ReadAt::Revision(page.revision);
        if let Some(r) = &mut self.remaining {
            *r -= page.items.len();
        }
        let last = page.items.last().map(|v| v.key.clone());
        match (page.more, last) {
            (true, Some(last)) if self.remaining == Some(0) => {
                let unfiltered =
                    self.opts.label_selector.is_none() && self.opts.field_selector.is_empty();
                self.remaining_item_count = page.remaining.filter(|_| unfiltered);
                self.continue_token = Some(encode_continue(&ContinueToken {
                    rv: self.resource_version.parse().unwrap_or_default(),
                    start: format!("{}/{}", last.namespace, last.name),
                    list: Some(self.identity.clone()),
                }));
            }
            (true, Some(last)) => self.next = Some(Some(last)),
            _ => {}
        }
        Ok(Some(decoded))
    }
}
