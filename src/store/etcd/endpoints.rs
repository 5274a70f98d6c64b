//! Which of `--etcd-servers` get requests: only members that accept connections.
//!
//! The client balances calls over its endpoints, and a call it routes to a member that is down
//! fails ("tcp connect error") instead of going to another: with one member of three killed,
//! a third of the calls failed although etcd had quorum, and a start could fail outright. So
//! a replica starts with the members that accept a connection, and a task takes members out
//! of the balance when they stop accepting and puts them back when they accept again.
use super::Inner;
use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

/// How often the members are tried; a member down is taken out of the balance within this.
const CHECK_EVERY: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// `host:port` of a server URL (`http://h:p`, `https://h:p/`, or bare `h:p`).
fn address(server: &str) -> &str {
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    rest.split('/').next().unwrap_or(rest)
}

async fn accepts(server: &str) -> bool {
    let connect = tokio::net::TcpStream::connect(address(server));
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, connect).await,
        Ok(Ok(_))
    )
}

/// The servers that accept a connection now, in the order given.
pub(super) async fn reachable(servers: &[String]) -> Vec<String> {
    let checks = servers.iter().map(|s| async move { (s, accepts(s).await) });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .filter(|(_, up)| *up)
        .map(|(s, _)| s.clone())
        .collect()
}

/// Keep the client's balance to the members that accept connections, for as long as the store
/// lives. `balanced`: the servers the client was built with.
pub(super) async fn follow_members(
    store: Weak<Inner>,
    servers: Vec<String>,
    balanced: Vec<String>,
) {
    let mut balanced: BTreeSet<String> = balanced.into_iter().collect();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let up: BTreeSet<String> = reachable(&servers).await.into_iter().collect();
        let Some(inner) = store.upgrade() else {
            return;
        };
        for server in &servers {
            let (is_up, is_in) = (up.contains(server), balanced.contains(server));
            if is_up && !is_in {
                match inner.client.add_endpoint(server).await {
                    Ok(()) => {
                        tracing::info!(server, "etcd member accepts connections again");
                        balanced.insert(server.clone());
                    }
                    Err(e) => tracing::warn!(server, error = %e, "cannot add etcd endpoint"),
                }
            } else if !is_up && is_in {
                match inner.client.remove_endpoint(server).await {
                    Ok(()) => {
                        tracing::warn!(
                            server,
                            "etcd member does not accept connections; not used until it does"
                        );
                        balanced.remove(server);
                    }
                    Err(e) => tracing::warn!(server, error = %e, "cannot remove etcd endpoint"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_address_of_a_server_url_is_its_host_and_port() {
        assert_eq!(super::address("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(super::address("https://etcd-0:2379/"), "etcd-0:2379");
        assert_eq!(super::address("etcd-1:2379"), "etcd-1:2379");
    }
}
