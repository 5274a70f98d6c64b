//! List responses, written as they are read: each chunk of items is encoded and sent before the
//! next one is read, so serving a list holds a chunk, not the answer (a list of 10^6 claims is
//! hundreds of megabytes of JSON, and a Table of it more).
//!
//! The list metadata comes first when it is known at the start: always for an unpaged list,
//! and for a page that fits one chunk. A longer page learns its continue token at its end, so
//! its metadata follows its items (JSON, YAML and protobuf fields may come in any order).
//! Protobuf frames the whole list with its length, so a PartialObjectMetadataList in protobuf
//! holds its encoded items (metadata only) until the end; metadata informers page it.
use super::negotiate::Representation;
use super::protobuf;
use super::respond::{meta_api_version, Served};
use super::table::{IncludeObject, PartialObjectMetadata, Row, TableHead};
use crate::error::{ApiError, ApiResult};
use crate::registry::{ListChunks, ObjectList};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::Serialize;

/// Where a list's items come from, a chunk at a time.
#[async_trait::async_trait]
pub trait ListSource<K>: Send + 'static {
    /// The next chunk; `None` at the end.
    async fn next_chunk(&mut self) -> ApiResult<Option<Vec<K>>>;
    fn resource_version(&self) -> &str;
    /// Final once [`ListSource::continue_token_known`].
    fn continue_token(&self) -> Option<&str>;
    fn continue_token_known(&self) -> bool;
    /// `remainingItemCount`, known with the continue token.
    fn remaining_item_count(&self) -> Option<usize> {
        None
    }
}

#[async_trait::async_trait]
impl<K: crate::registry::Kind> ListSource<K> for ListChunks<K> {
    async fn next_chunk(&mut self) -> ApiResult<Option<Vec<K>>> {
        ListChunks::next_chunk(self).await
    }
    fn resource_version(&self) -> &str {
        ListChunks::resource_version(self)
    }
    fn continue_token(&self) -> Option<&str> {
        ListChunks::continue_token(self)
    }
    fn continue_token_known(&self) -> bool {
        ListChunks::continue_token_known(self)
    }
    fn remaining_item_count(&self) -> Option<usize> {
        ListChunks::remaining_item_count(self)
    }
}

/// A list already in memory (what a deletecollection removed): one chunk.
#[async_trait::async_trait]
impl<K: Send + 'static> ListSource<K> for ObjectList<K> {
    async fn next_chunk(&mut self) -> ApiResult<Option<Vec<K>>> {
        Ok(Some(std::mem::take(&mut self.items)).filter(|items| !items.is_empty()))
    }
    fn resource_version(&self) -> &str {
        &self.resource_version
    }
    fn continue_token(&self) -> Option<&str> {
        self.continue_token.as_deref()
    }
    fn continue_token_known(&self) -> bool {
        true
    }
}

/// The list in the representation asked for, its body written as the source is read.
pub fn list_response<K: Served>(
    source: impl ListSource<K>,
    repr: Representation,
    include: IncludeObject,
) -> Response {
    let content_type = match repr {
        Representation::PartialObjectMetadataProtobuf => protobuf::MEDIA_TYPE,
        Representation::Object { yaml: true } => "application/yaml",
        _ => "application/json",
    };
    let writer = ListWriter {
        source,
        format: Format::of::<K>(repr),
        include,
        now: jiff::Timestamp::now(),
        items: 0,
        protobuf_items: Vec::new(),
        held: None,
        started: false,
        meta_first: false,
        done: false,
        _kind: std::marker::PhantomData,
    };
    let body = futures::stream::unfold(Some(writer), |writer| async move {
        let mut writer = writer?;
        match writer.next_bytes().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(writer))),
            Ok(None) => None,
            Err(e) => {
                // Past the status line: all that is left is to end the body short.
                tracing::warn!(error = %e, "list ended before its last item");
                Some((Err(e), None))
            }
        }
    });
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

/// The wire shapes of a list.
enum Format {
    /// `<Kind>List` in JSON or YAML.
    Objects {
        api_version: String,
        kind: String,
        yaml: bool,
    },
    Table,
    Metadata {
        api_version: &'static str,
    },
    MetadataProtobuf,
}

impl Format {
    fn of<K: Served>(repr: Representation) -> Format {
        let objects = |yaml| Format::Objects {
            api_version: K::api_version(&()).into_owned(),
            kind: format!("{}List", K::KIND),
            yaml,
        };
        match repr {
            Representation::Table { .. } => Format::Table,
            Representation::PartialObjectMetadata { beta } => Format::Metadata {
                api_version: meta_api_version(beta),
            },
            Representation::PartialObjectMetadataProtobuf => Format::MetadataProtobuf,
            Representation::Object { yaml } => objects(yaml),
            Representation::Discovery { .. } => objects(false),
        }
    }
}

struct ListWriter<K, S> {
    source: S,
    format: Format,
    include: IncludeObject,
    now: jiff::Timestamp,
    /// Items written so far.
    items: usize,
    /// The items of a protobuf list, held until its length is known.
    protobuf_items: Vec<u8>,
    /// Bytes to send after the tail.
    held: Option<Bytes>,
    started: bool,
    /// The list metadata was written before the items.
    meta_first: bool,
    done: bool,
    _kind: std::marker::PhantomData<K>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta<'a> {
    resource_version: &'a str,
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    continue_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_item_count: Option<usize>,
}

/// What a list of objects opens with; `metadata` unless it comes at the end.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectsHead<'a> {
    api_version: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<ListMeta<'a>>,
}

/// What a PartialObjectMetadataList opens with.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetadataHead<'a> {
    kind: &'static str,
    api_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<ListMeta<'a>>,
}

#[derive(Serialize)]
struct Tail<'a> {
    metadata: ListMeta<'a>,
}

fn encode_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("encode: {e}"))
}

impl<K: Served, S: ListSource<K>> ListWriter<K, S> {
    /// The next piece of the body: the head with the first chunk, a chunk, then the tail.
    async fn next_bytes(&mut self) -> ApiResult<Option<Bytes>> {
        if let Some(held) = self.held.take() {
            return Ok(Some(held));
        }
        if self.done {
            return Ok(None);
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            self.head(&mut out)?;
        }
        match self.source.next_chunk().await? {
            Some(chunk) => {
                for item in &chunk {
                    self.item(&mut out, item)?;
                }
            }
            None => {
                self.done = true;
                // A protobuf list's items follow its envelope's head as they are: no copy.
                self.held = self.tail(&mut out)?;
            }
        }
        Ok(Some(Bytes::from(out)))
    }

    fn meta(&self) -> ListMeta<'_> {
        ListMeta {
            resource_version: self.source.resource_version(),
            continue_token: self.source.continue_token().filter(|c| !c.is_empty()),
            remaining_item_count: self.source.remaining_item_count(),
        }
    }

    fn head(&mut self, out: &mut Vec<u8>) -> ApiResult<()> {
        self.meta_first = self.source.continue_token_known();
        let metadata = self.meta_first.then(|| self.meta());
        match &self.format {
            Format::Objects {
                api_version,
                kind,
                yaml: false,
            } => json_open(
                out,
                &ObjectsHead {
                    api_version,
                    kind,
                    metadata,
                },
                "items",
            ),
            Format::Objects {
                api_version,
                kind,
                yaml: true,
            } => {
                let head = serde_yaml::to_string(&ObjectsHead {
                    api_version,
                    kind,
                    metadata,
                })
                .map_err(encode_error)?;
                out.extend_from_slice(head.as_bytes());
                Ok(())
            }
            Format::Table => json_open(out, &TableHead::new::<K>(metadata), "rows"),
            Format::Metadata { api_version } => json_open(
                out,
                &MetadataHead {
                    kind: "PartialObjectMetadataList",
                    api_version,
                    metadata,
                },
                "items",
            ),
            Format::MetadataProtobuf => Ok(()),
        }
    }

    fn item(&mut self, out: &mut Vec<u8>, item: &K) -> ApiResult<()> {
        let first = self.items == 0;
        self.items += 1;
        if !first
            && !matches!(
                self.format,
                Format::MetadataProtobuf | Format::Objects { yaml: true, .. }
            )
        {
            out.push(b',');
        }
        match &self.format {
            Format::Objects { yaml: false, .. } => serde_json::to_writer(&mut *out, item),
            Format::Table => {
                serde_json::to_writer(&mut *out, &Row::new(item, self.include, self.now))
            }
            Format::Metadata { api_version } => serde_json::to_writer(
                &mut *out,
                &PartialObjectMetadata::new(api_version, item.meta()),
            ),
            Format::Objects { yaml: true, .. } => {
                if first {
                    out.extend_from_slice(b"items:\n");
                }
                let text = serde_yaml::to_string(item).map_err(encode_error)?;
                yaml_sequence_entry(out, &text);
                return Ok(());
            }
            Format::MetadataProtobuf => {
                protobuf::list_item(&mut self.protobuf_items, item.meta());
                return Ok(());
            }
        }
        .map_err(encode_error)
    }

    /// Close the list into `out`; for protobuf, the bytes that follow (the held items).
    fn tail(&mut self, out: &mut Vec<u8>) -> ApiResult<Option<Bytes>> {
        let late = !self.meta_first;
        match &self.format {
            Format::Objects { yaml: true, .. } => {
                if self.items == 0 {
                    out.extend_from_slice(b"items: []\n");
                }
                if late {
                    let tail = serde_yaml::to_string(&Tail {
                        metadata: self.meta(),
                    })
                    .map_err(encode_error)?;
                    out.extend_from_slice(tail.as_bytes());
                }
                Ok(None)
            }
            Format::MetadataProtobuf => {
                let items = std::mem::take(&mut self.protobuf_items);
                let meta = self.meta();
                let [head, items] = protobuf::list_envelope(
                    items,
                    Some(meta.resource_version),
                    meta.continue_token,
                    meta.remaining_item_count,
                );
                out.extend_from_slice(&head);
                Ok(Some(items))
            }
            _ => {
                out.push(b']');
                if late {
                    out.extend_from_slice(b",\"metadata\":");
                    serde_json::to_writer(&mut *out, &self.meta()).map_err(encode_error)?;
                }
                out.push(b'}');
                Ok(None)
            }
        }
    }
}

/// `head` as a JSON object left open with an empty array `field` begun: `{...,"field":[`.
fn json_open(out: &mut Vec<u8>, head: &impl Serialize, field: &str) -> ApiResult<()> {
    serde_json::to_writer(&mut *out, head).map_err(encode_error)?;
    // The head is an object with at least one field: replace its `}` with the next field.
    out.pop();
    out.push(b',');
    serde_json::to_writer(&mut *out, field).map_err(encode_error)?;
    out.extend_from_slice(b":[");
    Ok(())
}

/// `text`, one YAML document (a mapping), as an entry of a block sequence at the top level:
/// `- ` before its first line, two spaces before the others. Indenting every line alike keeps
/// block scalars valid (their indentation is relative).
fn yaml_sequence_entry(out: &mut Vec<u8>, text: &str) {
    for (i, line) in text.lines().enumerate() {
        match (i, line.is_empty()) {
            (0, _) => out.extend_from_slice(b"- "),
            (_, false) => out.extend_from_slice(b"  "),
            (_, true) => {}
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests;
