//! One replica at a time does the work that must happen once: the one holding `<root>leader`,
//! a key bound to its etcd lease. The key is taken with a compare-and-swap
//! (`If(create_revision == 0) Then(put with lease)`); it goes when its holder's lease ends
//! (the holder stopped renewing: killed, paused, cut off) or is revoked (a clean step down),
//! and the next replica to try takes it.
//!
//! A replica stops leading as soon as a renewal of its lease fails or goes unanswered, well
//! before etcd expires the lease, so two replicas never both believe they lead while their
//! clocks run. A process paused past its lease may still act on its belief for a moment when it
//! wakes: the work it gates keeps compare-and-swap preconditions that make such a write fail.
use super::*;
use etcd_client::PutOptions;
use std::sync::Weak;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a follower tries to take the key (the holder's lease may have ended).
const RETRY: Duration = Duration::from_secs(1);

/// Who campaigns, for the logs and the key's value.
pub(super) fn identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".to_string());
    format!("{host}_{}", std::process::id())
}

/// Campaign for as long as the store lives, reporting through `leading`. `ttl` is the lease's
/// time to live: how long the other replicas wait for a leader that stopped renewing.
pub(super) async fn campaign(
    store: Weak<Inner>,
    leading: watch::Sender<bool>,
    ttl: Duration,
    identity: String,
) {
    loop {
        let Some((client, key)) = store
            .upgrade()
            .map(|i| (i.client.clone(), [i.root.as_slice(), b"leader"].concat()))
        else {
            return;
        };
        let ended = term(&store, &client, &key, ttl, &identity, &leading).await;
        if leading.send_replace(false) {
            match &ended {
                Ok(()) => tracing::info!("no longer leading: the store is shutting down"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "no longer leading: the lease could not be kept; the work done once stops here"
                ),
            }
        } else if let Err(e) = ended {
            tracing::debug!(error = %e, "leader election: retrying");
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One lease: try to take the key until this replica holds it, then hold it while renewals
/// answer. Ends (revoking the lease) when one does not, or when the store is gone.
async fn term(
    store: &Weak<Inner>,
    client: &Client,
    key: &[u8],
    ttl: Duration,
    identity: &str,
    leading: &watch::Sender<bool>,
) -> Result<(), StoreError> {
    let mut leases = client.lease_client();
    let ttl_seconds = ttl.as_secs().max(2) as i64;
    let lease = timeout(leases.grant(ttl_seconds, None)).await?.id();
    let held = hold(store, client, key, ttl, lease, identity, leading).await;
    // Stepping down: the next leader need not wait out the lease (best effort: when etcd does
    // not answer, the lease ends by itself).
    let _ = bounded(ttl / 3, leases.revoke(lease)).await;
    held
}

async fn hold(
    store: &Weak<Inner>,
    client: &Client,
    key: &[u8],
    ttl: Duration,
    lease: i64,
    identity: &str,
    leading: &watch::Sender<bool>,
) -> Result<(), StoreError> {
    // Renewed three times per lease: a renewal that fails or waits past the next one's time
    // ends the term with a third of the lease to spare.
    let renew_every = ttl / 3;
    let mut leases = client.lease_client();
    let (mut keeper, mut renewals) = bounded(renew_every, leases.keep_alive(lease)).await?;
    let mut renew_at = Instant::now() + renew_every;
    let mut kv = client.kv_client();
    let mut holder = String::new();
    loop {
        if store.strong_count() == 0 {
            return Ok(());
        }
        // Take the key if it is free; else read who holds it (this lease, while leading).
        let txn = Txn::new()
            .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.to_vec(),
                identity.as_bytes().to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.to_vec(), None)]);
        let done = bounded(renew_every, kv.txn(txn)).await?;
        let ours = done.succeeded()
            || done.op_responses().iter().any(|r| match r {
                TxnOpResponse::Get(got) => got.kvs().first().is_some_and(|kv| kv.lease() == lease),
                _ => false,
            });
        if ours && !leading.send_replace(true) {
            tracing::info!(
                identity,
                lease = format!("{lease:x}"),
                ttl = ?ttl,
                "leading: this replica now does the work done once (status refresh, retention, Released events, compaction)"
            );
        }
        if !ours {
            if leading.send_replace(false) {
                // Someone else holds the key while our lease lives: it was deleted by hand.
                tracing::warn!("no longer leading: the leader key is held by another replica");
            }
            let now_held = done
                .op_responses()
                .iter()
                .find_map(|r| match r {
                    TxnOpResponse::Get(got) => got.kvs().first().map(|kv| kv.value().to_vec()),
                    _ => None,
                })
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            if now_held != holder {
                tracing::info!(leader = now_held, "following");
                holder = now_held;
            }
        }
        let wake = if ours {
            renew_at
        } else {
            renew_at.min(Instant::now() + RETRY)
        };
        tokio::time::sleep_until(wake).await;
        if Instant::now() >= renew_at {
            let sent = Instant::now();
            renew(&mut keeper, &mut renewals, renew_every).await?;
            renew_at = sent + renew_every;
        }
    }
}

/// Renew the lease once; an error when etcd does not answer within `within` or the lease is
/// gone.
async fn renew(
    keeper: &mut etcd_client::LeaseKeeper,
    renewals: &mut etcd_client::LeaseKeepAliveStream,
    within: Duration,
) -> Result<(), StoreError> {
    let answer = bounded(within, async {
        keeper.keep_alive().await?;
        renewals.message().await
    })
    .await?;
    match answer {
        Some(r) if r.ttl() > 0 => Ok(()),
        Some(_) => Err(StoreError::Unavailable("the leader lease expired".into())),
        None => Err(StoreError::Unavailable(
            "etcd closed the lease renewal stream".into(),
        )),
    }
}

/// An etcd call bounded by `within` (shorter than [`REQUEST_TIMEOUT`]: the lease's margin).
async fn bounded<T>(
    within: Duration,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(within.min(REQUEST_TIMEOUT), call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(etcd_error(e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd did not answer within {:?}",
            within.min(REQUEST_TIMEOUT)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::TestEtcd;
    use crate::store::{Leadership, Store};
    use std::time::Duration;

    /// Waits until `pred` holds for the leaderships, or panics after `within`.
    async fn until(leaders: &[Leadership], within: Duration, pred: impl Fn(&[bool]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now: Vec<bool> = leaders.iter().map(Leadership::is_leader).collect();
            if pred(&now) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "leadership stayed {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn leading(now: &[bool]) -> usize {
        now.iter().filter(|l| **l).count()
    }

    #[tokio::test]
    async fn one_of_three_stores_leads_and_another_takes_over_when_it_goes() {
        let Some(etcd) = TestEtcd::start("one_of_three_stores_leads") else {
            return;
        };
        let mut stores = Vec::new();
        for _ in 0..3 {
            stores.push(Some(etcd.store("/registry", 10).await));
        }
        let leaders: Vec<Leadership> = stores.iter().flatten().map(|s| s.leadership()).collect();
        until(&leaders, Duration::from_secs(30), |l| leading(l) == 1).await;
        // It stays one while they all renew, over several lease renewals (2 s lease).
        for _ in 0..40 {
            let now: Vec<bool> = leaders.iter().map(Leadership::is_leader).collect();
            assert_eq!(leading(&now), 1, "{now:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first = leaders
            .iter()
            .position(Leadership::is_leader)
            .expect("one leads");
        // The leader goes: one of the two others leads.
        stores[first] = None;
        until(&leaders, Duration::from_secs(30), |l| {
            !l[first] && leading(l) == 1
        })
        .await;
    }

    #[tokio::test]
    async fn a_leader_cut_off_from_etcd_stops_leading() {
        let Some(mut etcd) = TestEtcd::start("a_leader_cut_off_from_etcd_stops_leading") else {
            return;
        };
        let store = etcd.store("/registry", 10).await;
        let mut leadership = store.leadership();
        tokio::time::timeout(Duration::from_secs(30), leadership.acquired())
            .await
            .expect("a lone store leads");
        etcd.kill();
        // Its renewals go unanswered: it steps down (by itself, with no etcd to tell it).
        tokio::time::timeout(Duration::from_secs(30), leadership.lost())
            .await
            .expect("no longer leading without etcd");
    }
}
