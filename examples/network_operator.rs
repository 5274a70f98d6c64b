//! A network operator on top of `ipam.miloapis.com`, written with kube-rs.
//!
//! - networking enabled for a project: claim the project's /48 from the platform root;
//! - per location: a /64 subnet from the project's pool, its first address kept for the gateway;
//! - per network interface: a /128 with `reclaimPolicy: Retain`, so an interface deleted and
//!   recreated under the same name gets its old address back;
//! - project deleted: every claim is deleted and retained addresses are freed.
//!
//! Every write is a server-side apply (`Patch::Apply`) with one field manager, so running a step
//! twice is a no-op. Against a standalone server:
//!
//! ```text
//! ipam-apiserver serve --standalone --data-dir /tmp/ipam &
//! KUBECONFIG=/tmp/ipam/kubeconfig cargo run --example network_operator
//! ```
#![allow(dead_code)] // the integration test uses the functions, `main` the demo

use ipam_apiserver::api::{prefix_phase, IPPrefix, IPPrefixClaim, IpFamily};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use std::net::IpAddr;

/// The field manager of every write.
pub const MANAGER: &str = "network-operator";
/// The platform root every project pool is carved from.
pub const ROOT: &str = "platform-ula";

fn ssa() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The platform root `fd20::/20` (idempotent).
pub async fn ensure_root(client: &Client) -> Result<ipnet::IpNet, Error> {
    let api: Api<IPPrefix> = Api::all(client.clone());
    let root =
        IPPrefix::root(ROOT, "fd20::/20".parse()?).label("ipam.miloapis.com/tier", "platform");
    let root = api.patch(ROOT, &ssa(), &Patch::Apply(&root)).await?;
    root.prefix().ok_or_else(|| "root has no prefix".into())
}

fn pool_prefix_name(project: &str) -> String {
    format!("{project}-pool")
}

fn subnet_prefix_name(project: &str, location: &str) -> String {
    format!("{project}-{location}")
}

/// Apply `claim` and return the block the server allocated for it.
async fn claim(client: &Client, claim: IPPrefixClaim) -> Result<ipnet::IpNet, Error> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let api: Api<IPPrefixClaim> = Api::namespaced(client.clone(), &ns);
    let bound = api.patch(&name, &ssa(), &Patch::Apply(&claim)).await?;
    bound
        .allocated_prefix()
        .ok_or_else(|| format!("claim {ns}/{name} is not bound").into())
}

/// Networking enabled for `project`: its /48 from the platform root.
pub async fn enable_networking(client: &Client, project: &str) -> Result<ipnet::IpNet, Error> {
    let pool = IPPrefixClaim::new_with_length(project, "pool", ROOT, 48)
        .prefix_name(&pool_prefix_name(project));
    claim(client, pool).await
}

/// A /64 subnet for `location` in the project's pool; its first address is the gateway's.
pub async fn ensure_subnet(
    client: &Client,
    project: &str,
    location: &str,
) -> Result<ipnet::IpNet, Error> {
    let subnet = IPPrefixClaim::new_with_length(
        project,
        &format!("subnet-{location}"),
        &pool_prefix_name(project),
        64,
    )
    .reserve(1, 0)
    .prefix_name(&subnet_prefix_name(project, location))
    .prefix_label("ipam.miloapis.com/location", location);
    claim(client, subnet).await
}

/// The address of network interface `nic` in `location`'s subnet (kept across delete/recreate).
pub async fn ensure_interface(
    client: &Client,
    project: &str,
    location: &str,
    nic: &str,
) -> Result<IpAddr, Error> {
    let host = IPPrefixClaim::new_host(
        project,
        &format!("nic-{nic}"),
        &subnet_prefix_name(project, location),
        IpFamily::IPv6,
    )
    .retain();
    Ok(claim(client, host).await?.addr())
}

/// The interface is gone: its claim goes, its address stays Released for it.
pub async fn delete_interface(client: &Client, project: &str, nic: &str) -> Result<(), Error> {
    let api: Api<IPPrefixClaim> = Api::namespaced(client.clone(), project);
    api.delete(&format!("nic-{nic}"), &DeleteParams::default())
        .await?;
    Ok(())
}

/// The project is deleted: every claim goes, and the addresses kept for its interfaces are freed,
/// so the pool's claim (held while it has children) is released last.
pub async fn disable_networking(client: &Client, project: &str) -> Result<(), Error> {
    let claims: Api<IPPrefixClaim> = Api::namespaced(client.clone(), project);
    claims
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let prefixes: Api<IPPrefix> = Api::all(client.clone());
    let released = prefixes
        .list(&ListParams::default().fields(&format!("status.phase={}", prefix_phase::RELEASED)))
        .await?;
    for p in released {
        if p.spec.claim_ref.as_ref().map(|c| c.namespace.as_str()) == Some(project) {
            let name = p.metadata.name.clone().unwrap_or_default();
            prefixes.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = Client::try_default().await?;
    println!("root: {}", ensure_root(&client).await?);
    for project in ["project-a", "project-b"] {
        println!(
            "{project}: pool {}",
            enable_networking(&client, project).await?
        );
        for location in ["dfw", "ord"] {
            println!(
                "{project}: {location} subnet {}",
                ensure_subnet(&client, project, location).await?
            );
        }
        for nic in ["vm-1-eth0", "vm-2-eth0"] {
            println!(
                "{project}: {nic} {}",
                ensure_interface(&client, project, "dfw", nic).await?
            );
        }
    }
    delete_interface(&client, "project-a", "vm-1-eth0").await?;
    println!(
        "project-a: vm-3-eth0 {}",
        ensure_interface(&client, "project-a", "dfw", "vm-3-eth0").await?
    );
    println!(
        "project-a: vm-1-eth0 recreated {}",
        ensure_interface(&client, "project-a", "dfw", "vm-1-eth0").await?
    );
    for project in ["project-a", "project-b"] {
        disable_networking(&client, project).await?;
        println!("{project}: released");
    }
    Ok(())
}
