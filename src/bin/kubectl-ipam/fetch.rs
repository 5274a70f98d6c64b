//! Lists read in pages (`limit` + `continue`), so a plan of 10^5 prefixes is never one
//! response.
use crate::Error;
use ipam_apiserver::api::IPPrefix;
use kube::api::{Api, ListParams};

const PAGE: u32 = 500;

/// Every IPPrefix matching `fields` (a field selector; empty for all).
pub async fn prefixes(client: &kube::Client, fields: &str) -> Result<Vec<IPPrefix>, Error> {
    let api: Api<IPPrefix> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE);
    if !fields.is_empty() {
        params = params.fields(fields);
    }
    let mut items = Vec::new();
    loop {
        let page = api.list(&params).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// One IPPrefix by name; a missing one is an error naming it.
pub async fn prefix(client: &kube::Client, name: &str) -> Result<IPPrefix, Error> {
    let api: Api<IPPrefix> = Api::all(client.clone());
    api.get_opt(name)
        .await?
        .ok_or_else(|| format!("ipprefix {name:?} not found").into())
}

/// A Released IPPrefix with the instants its status records (read from the object as served,
/// so they show whichever of them the server writes).
pub struct Released {
    pub prefix: IPPrefix,
    pub released_at: Option<jiff::Timestamp>,
    pub retained_until: Option<jiff::Timestamp>,
}

/// Every Released IPPrefix.
pub async fn released(client: &kube::Client) -> Result<Vec<Released>, Error> {
    let resource = kube::discovery::ApiResource::erase::<IPPrefix>(&());
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut params = ListParams::default()
        .limit(PAGE)
        .fields("status.phase=Released");
    let mut items = Vec::new();
    loop {
        let page = api.list(&params).await?;
        for obj in page.items {
            let value = serde_json::to_value(&obj)?;
            let instant = |field: &str| {
                value["status"][field]
                    .as_str()
                    .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            };
            items.push(Released {
                released_at: instant("releasedAt"),
                retained_until: instant("retainedUntil"),
                prefix: serde_json::from_value(value)?,
            });
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}
