//! The IPPrefix tree as listed, with each prefix's usage computed by the server's allocator
//! from the children in the same list (so the figures always agree with the lines below them).
use ipam_apiserver::api::IPPrefix;
use ipam_apiserver::registry::pool_with_children;
use ipnet::IpNet;
use std::collections::HashMap;

pub struct Node {
    pub prefix: IPPrefix,
    pub name: String,
    pub net: Option<IpNet>,
    /// Indexes of the children, in address order.
    pub children: Vec<usize>,
    pub usage: Usage,
}

pub struct Usage {
    /// `12.50%`, as the server's status writes it.
    pub utilization: String,
    /// (allocated + excluded) / total.
    pub ratio: f64,
    pub largest_free: Option<u8>,
}

pub struct Hierarchy {
    pub nodes: Vec<Node>,
    pub by_name: HashMap<String, usize>,
    /// Prefixes without a parent (or whose parent is not listed), in address order.
    pub roots: Vec<usize>,
}

impl Hierarchy {
    pub fn new(prefixes: Vec<IPPrefix>) -> Hierarchy {
        let mut nodes: Vec<Node> = prefixes
            .into_iter()
            .map(|prefix| Node {
                name: prefix.metadata.name.clone().unwrap_or_default(),
                net: prefix.prefix(),
                prefix,
                children: Vec::new(),
                usage: Usage {
                    utilization: String::new(),
                    ratio: 0.0,
                    largest_free: None,
                },
            })
            .collect();
        // Address order (IPv4 first), then name.
        nodes.sort_by(|a, b| (a.net, &a.name).cmp(&(b.net, &b.name)));
        let by_name: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut roots = Vec::new();
        for i in 0..nodes.len() {
            let parent = nodes[i].prefix.spec.parent_ref.as_ref();
            match parent.and_then(|p| by_name.get(&p.name)) {
                Some(&p) => nodes[p].children.push(i),
                None => roots.push(i),
            }
        }
        for i in 0..nodes.len() {
            let children: Vec<IpNet> = nodes[i]
                .children
                .iter()
                .filter_map(|&c| nodes[c].net)
                .collect();
            nodes[i].usage = usage(&nodes[i].prefix, children);
        }
        Hierarchy {
            nodes,
            by_name,
            roots,
        }
    }
}

/// From the allocator over the listed children; from the stored status when they do not fit
/// together (a page read while the tree changed).
fn usage(prefix: &IPPrefix, children: Vec<IpNet>) -> Usage {
    match pool_with_children(prefix, children) {
        Ok(pool) => {
            let capacity = pool.capacity();
            Usage {
                utilization: capacity.utilization(),
                ratio: capacity.ratio(),
                largest_free: pool.largest_free_prefix_len(),
            }
        }
        Err(_) => {
            let status = prefix.status.clone().unwrap_or_default();
            let utilization = status.utilization.unwrap_or_default();
            Usage {
                ratio: utilization
                    .trim_end_matches('%')
                    .parse::<f64>()
                    .map_or(0.0, |p| p / 100.0),
                utilization,
                largest_free: status
                    .largest_free_prefix_length
                    .and_then(|l| u8::try_from(l).ok()),
            }
        }
    }
}
