use super::*;
use crate::api::IPPrefix;
use serde_json::Value;

/// `chunks` of prefixes. With a continue token, like a page longer than a chunk: the token is
/// known only after the last chunk; without, like an unpaged list.
struct Pages {
    chunks: std::collections::VecDeque<Vec<IPPrefix>>,
    token: Option<&'static str>,
}

#[async_trait::async_trait]
impl ListSource<IPPrefix> for Pages {
    async fn next_chunk(&mut self) -> ApiResult<Option<Vec<IPPrefix>>> {
        Ok(self.chunks.pop_front())
    }
    fn resource_version(&self) -> &str {
        "42"
    }
    fn continue_token(&self) -> Option<&str> {
        self.token
    }
    fn continue_token_known(&self) -> bool {
        self.token.is_none() || self.chunks.is_empty()
    }
}

fn pages(chunks: &[usize], token: Option<&'static str>) -> Pages {
    let mut n = 0;
    let chunks = chunks
        .iter()
        .map(|len| {
            (0..*len)
                .map(|_| {
                    n += 1;
                    IPPrefix::root(
                        &format!("p{n:03}"),
                        format!("10.{n}.0.0/16").parse().unwrap(),
                    )
                })
                .collect()
        })
        .collect();
    Pages { chunks, token }
}

async fn body(source: Pages, repr: Representation) -> Vec<u8> {
    let resp = list_response::<IPPrefix>(source, repr, IncludeObject::Metadata);
    axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("the whole body")
        .to_vec()
}

fn names(items: &Value) -> Vec<&str> {
    items
        .as_array()
        .expect("an array")
        .iter()
        .map(|i| {
            i.pointer("/metadata/name")
                .or_else(|| i.pointer("/object/metadata/name"))
                .and_then(Value::as_str)
                .expect("a name")
        })
        .collect()
}

const JSON: Representation = Representation::Object { yaml: false };

#[tokio::test]
async fn an_unpaged_list_in_chunks_is_one_list_with_its_metadata_first() {
    let text = body(pages(&[2, 0, 3], None), JSON).await;
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.starts_with(r#"{"apiVersion":"ipam.miloapis.com/v1alpha1","kind":"IPPrefixList","metadata":{"resourceVersion":"42"},"items":[{"#),
        "{text}"
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        names(&list["items"]),
        ["p001", "p002", "p003", "p004", "p005"]
    );
}

#[tokio::test]
async fn a_page_learns_its_continue_token_at_its_end_and_writes_it_after_the_items() {
    for repr in [JSON, Representation::Object { yaml: true }] {
        let text = body(pages(&[2, 2], Some("tok")), repr).await;
        let list: Value = match repr {
            JSON => serde_json::from_slice(&text).unwrap(),
            _ => serde_yaml::from_slice(&text).unwrap(),
        };
        assert_eq!(
            list["metadata"],
            serde_json::json!({"resourceVersion": "42", "continue": "tok"}),
            "{repr:?}"
        );
        assert_eq!(names(&list["items"]), ["p001", "p002", "p003", "p004"]);
        assert_eq!(list["kind"], "IPPrefixList");
    }
}

#[tokio::test]
async fn an_empty_list_is_an_empty_array_in_every_representation() {
    for repr in [
        JSON,
        Representation::Object { yaml: true },
        Representation::Table { beta: false },
        Representation::PartialObjectMetadata { beta: false },
    ] {
        let text = body(pages(&[], None), repr).await;
        let list: Value = match repr {
            Representation::Object { yaml: true } => serde_yaml::from_slice(&text).unwrap(),
            _ => serde_json::from_slice(&text).unwrap(),
        };
        let field = match repr {
            Representation::Table { .. } => "rows",
            _ => "items",
        };
        assert_eq!(list[field], serde_json::json!([]), "{repr:?}");
        assert_eq!(list["metadata"]["resourceVersion"], "42", "{repr:?}");
    }
}

#[tokio::test]
async fn table_and_metadata_lists_in_chunks_hold_every_item_once() {
    let table: Value = serde_json::from_slice(
        &body(
            pages(&[1, 2], Some("t")),
            Representation::Table { beta: false },
        )
        .await,
    )
    .unwrap();
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["columnDefinitions"].as_array().unwrap().len(), 11);
    assert_eq!(names(&table["rows"]), ["p001", "p002", "p003"]);
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(table["rows"][0]["cells"][1], "10.1.0.0/16");
    assert_eq!(table["metadata"]["continue"], "t");

    let beta = Representation::PartialObjectMetadata { beta: true };
    let list: Value = serde_json::from_slice(&body(pages(&[2, 1], None), beta).await).unwrap();
    assert_eq!(list["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(list["items"][2]["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(names(&list["items"]), ["p001", "p002", "p003"]);
}

#[tokio::test]
async fn a_protobuf_metadata_list_in_chunks_decodes_as_one_list() {
    use prost::Message;
    let bytes = body(
        pages(&[2, 1], Some("tok")),
        Representation::PartialObjectMetadataProtobuf,
    )
    .await;
    let unknown = protobuf::Unknown::decode(bytes.strip_prefix(b"k8s\0").unwrap()).unwrap();
    assert_eq!(
        unknown.type_meta.unwrap().kind.as_deref(),
        Some("PartialObjectMetadataList")
    );
    let list =
        protobuf::PartialObjectMetadataList::decode(unknown.raw.unwrap().as_slice()).unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|i| i.metadata.as_ref().unwrap().name.clone().unwrap())
        .collect();
    assert_eq!(names, ["p001", "p002", "p003"]);
    let meta = list.metadata.unwrap();
    assert_eq!(meta.resource_version.as_deref(), Some("42"));
    assert_eq!(meta.r#continue.as_deref(), Some("tok"));
}
