//! The five commands. Each prints aligned columns, or with `-o json` one JSON document.
use crate::hierarchy::{Hierarchy, Node};
use crate::table::{length, or_dash, Table};
use crate::{fetch, Error, Output};
use ipam_apiserver::api::IPPrefix;
use ipam_apiserver::registry::pool_with_children;
use ipam_apiserver::registry::selector::parse_address_or_cidr;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

fn claim_of(p: &IPPrefix) -> Option<String> {
    p.spec
        .claim_ref
        .as_ref()
        .map(|c| format!("{}/{}", c.namespace, c.name))
}

fn print_json(value: &Value) -> Result<(), Error> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `tree [NAME] [--depth N]`.
pub async fn tree(
    client: &kube::Client,
    name: Option<&str>,
    depth: Option<usize>,
    out: Output,
) -> Result<ExitCode, Error> {
    let tree = Hierarchy::new(fetch::prefixes(client, "").await?);
    let starts = match name {
        Some(name) => vec![*tree
            .by_name
            .get(name)
            .ok_or_else(|| format!("ipprefix {name:?} not found"))?],
        None => tree.roots.clone(),
    };
    let max_depth = depth.unwrap_or(usize::MAX);
    if out == Output::Json {
        let nodes: Vec<Value> = starts
            .iter()
            .map(|&i| node_json(&tree, i, 0, max_depth))
            .collect();
        print_json(&Value::Array(nodes))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "PREFIX",
        "NAME",
        "PHASE",
        "CLAIM",
        "UTILIZATION",
        "LARGEST-FREE",
    ]);
    // Depth first, children in address order; an explicit stack, as a tree may be deep.
    let mut stack: Vec<(usize, usize)> = starts.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, level)) = stack.pop() {
        let node = &tree.nodes[i];
        table.row(vec![
            format!("{}{}", "  ".repeat(level), node.prefix.spec.prefix),
            node.name.clone(),
            or_dash(Some(node.prefix.phase().to_string())),
            or_dash(claim_of(&node.prefix)),
            node.usage.utilization.clone(),
            length(node.usage.largest_free),
        ]);
        if level < max_depth {
            stack.extend(node.children.iter().rev().map(|&c| (c, level + 1)));
        }
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

fn summary_json(node: &Node) -> Value {
    json!({
        "name": node.name,
        "prefix": node.prefix.spec.prefix,
        "phase": node.prefix.phase(),
        "claim": claim_of(&node.prefix),
        "utilization": node.usage.utilization,
        "largestFreePrefixLength": node.usage.largest_free,
        "childCount": node.children.len(),
    })
}

fn node_json(tree: &Hierarchy, i: usize, level: usize, max_depth: usize) -> Value {
    let node = &tree.nodes[i];
    let mut value = summary_json(node);
    if level < max_depth {
        value["children"] = node
            .children
            .iter()
            .map(|&c| node_json(tree, c, level + 1, max_depth))
            .collect();
    }
    value
}

/// `lookup ADDRESS|CIDR`: answered by the server's `spec.prefix.contains` field selector.
pub async fn lookup(client: &kube::Client, address: &str, out: Output) -> Result<ExitCode, Error> {
    let wanted = parse_address_or_cidr(address)
        .ok_or_else(|| format!("{address:?} is not an IP address or CIDR"))?;
    let chain = fetch::prefixes(client, &format!("spec.prefix.contains={wanted}")).await?;
    let holder = chain.last().and_then(claim_of);
    if out == Output::Json {
        let chain: Vec<Value> = chain
            .iter()
            .map(|p| {
                json!({
                    "name": p.metadata.name,
                    "prefix": p.spec.prefix,
                    "phase": p.phase(),
                    "claim": claim_of(p),
                })
            })
            .collect();
        let found = !chain.is_empty();
        print_json(&json!({"address": address, "chain": chain, "claim": holder}))?;
        return Ok(if found {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if chain.is_empty() {
        eprintln!("no ipprefix contains {address}");
        return Ok(ExitCode::from(1));
    }
    let mut table = Table::new(&["PREFIX", "NAME", "PHASE", "CLAIM"]);
    // Each root starts a chain of its own (one per address space).
    let mut level = 0;
    for p in &chain {
        if p.spec.parent_ref.is_none() {
            level = 0;
        }
        table.row(vec![
            format!("{}{}", "  ".repeat(level), p.spec.prefix),
            p.metadata.name.clone().unwrap_or_default(),
            or_dash(Some(p.phase().to_string())),
            or_dash(claim_of(p)),
        ]);
        level += 1;
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// `free NAME [--length N]`: the allocator's own free-block index, rebuilt from the children.
pub async fn free(
    client: &kube::Client,
    name: &str,
    len: Option<u8>,
    out: Output,
) -> Result<ExitCode, Error> {
    let prefix = fetch::prefix(client, name).await?;
    let children = fetch::prefixes(client, &format!("spec.parentRef.name={name}")).await?;
    let pool = pool_with_children(&prefix, children.iter().filter_map(IPPrefix::prefix))?;
    let blocks: Vec<(String, String)> = pool
        .free_blocks()
        .map(|b| {
            let size = ipam_apiserver::alloc::AddressCount::pow2(u32::from(
                b.max_prefix_len() - b.prefix_len(),
            ))
            .map_or_else(String::new, |c| c.to_string());
            (b.to_string(), size)
        })
        .collect();
    let fits = match len {
        Some(l) => Some(pool.fitting(l).ok_or_else(|| {
            format!(
                "/{l} cannot be allocated in ipprefix {name:?} ({}): must be longer than it and at most /{}",
                pool.prefix(),
                pool.prefix().max_prefix_len()
            )
        })?),
        None => None,
    };
    if out == Output::Json {
        let free: Vec<Value> = blocks
            .iter()
            .map(|(b, size)| json!({"prefix": b, "addresses": size}))
            .collect();
        let mut value = json!({"name": name, "prefix": prefix.spec.prefix, "free": free});
        if let (Some(l), Some(n)) = (len, fits) {
            value["length"] = json!(l);
            value["fits"] = json!(n.to_string());
        }
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["FREE", "ADDRESSES"]);
    for (b, size) in blocks {
        table.row(vec![b, size]);
    }
    table.print();
    if let (Some(l), Some(n)) = (len, fits) {
        println!(
            "{n} free /{l} blocks fit in {name} ({})",
            prefix.spec.prefix
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `released [--older-than DURATION]`.
pub async fn released(
    client: &kube::Client,
    older_than: Option<Duration>,
    out: Output,
) -> Result<ExitCode, Error> {
    let now = jiff::Timestamp::now();
    let mut rows: Vec<(fetch::Released, Option<Duration>)> = fetch::released(client)
        .await?
        .into_iter()
        .map(|r| {
            let age = r
                .released_at
                .and_then(|at| Duration::try_from(now.duration_since(at)).ok());
            (r, age)
        })
        .filter(|(_, age)| older_than.is_none_or(|min| age.is_some_and(|a| a >= min)))
        .collect();
    // Oldest first; those without a release time last, by name.
    rows.sort_by(|(a, age_a), (b, age_b)| {
        age_b
            .cmp(age_a)
            .then_with(|| a.prefix.metadata.name.cmp(&b.prefix.metadata.name))
    });
    if out == Output::Json {
        let items: Vec<Value> = rows
            .iter()
            .map(|(r, age)| {
                json!({
                    "name": r.prefix.metadata.name,
                    "prefix": r.prefix.spec.prefix,
                    "claim": claim_of(&r.prefix),
                    "releasedAt": r.released_at.map(|t| t.to_string()),
                    "retainedUntil": r.retained_until.map(|t| t.to_string()),
                    "ageSeconds": age.map(|a| a.as_secs()),
                })
            })
            .collect();
        print_json(&Value::Array(items))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "PREFIX", "CLAIM", "AGE", "EXPIRES"]);
    for (r, age) in &rows {
        let expires = match r.retained_until {
            Some(until) => match Duration::try_from(until.duration_since(now)) {
                Ok(left) => format!("in {}", human(left)),
                Err(_) => "due".into(),
            },
            None => "never".into(),
        };
        table.row(vec![
            r.prefix.metadata.name.clone().unwrap_or_default(),
            r.prefix.spec.prefix.clone(),
            or_dash(claim_of(&r.prefix)),
            age.map_or_else(|| "-".into(), human),
            expires,
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// `top [--limit N]`.
pub async fn top(client: &kube::Client, limit: usize, out: Output) -> Result<ExitCode, Error> {
    let tree = Hierarchy::new(fetch::prefixes(client, "").await?);
    let mut pools: Vec<&Node> = tree
        .nodes
        .iter()
        .filter(|n| !n.children.is_empty() || n.prefix.spec.parent_ref.is_none())
        .collect();
    pools.sort_by(|a, b| {
        b.usage
            .ratio
            .total_cmp(&a.usage.ratio)
            .then_with(|| a.name.cmp(&b.name))
    });
    pools.truncate(limit);
    if out == Output::Json {
        print_json(&pools.iter().map(|n| summary_json(n)).collect())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "PREFIX", "UTILIZATION", "CHILDREN", "LARGEST-FREE"]);
    for n in pools {
        table.row(vec![
            n.name.clone(),
            n.prefix.spec.prefix.clone(),
            n.usage.utilization.clone(),
            n.children.len().to_string(),
            length(n.usage.largest_free),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// `30s`, `15m`, `12h`, `7d` (or combined: `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("{s:?}: unknown unit {c:?}; use s, m, h or d")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?}: expected a number before {c:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{s:?}: a unit is missing (s, m, h or d)"));
    }
    Ok(Duration::from_secs(total))
}

/// An age as kubectl shows it: the largest unit, two when short (`45s`, `5m10s`, `3h`, `12d`).
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10799 => format!("{}m", s / 60),
        10800..=172799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
