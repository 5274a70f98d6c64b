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
//!
//! The key's value is the holder's identity, a newline, and its contact
//! ([`Store::advertise`](crate::store::Store::advertise)); the other replicas read it on every
//! try and keep the contact for [`Store::leader_contact`](crate::store::Store::leader_contact).
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

/// Campaign for as long as the store lives, or until `resign` is notified, reporting through
/// `leading`. `ttl` is the lease's time to live: how long the other replicas wait for a leader
/// that stopped renewing.
pub(super) async fn campaign(
    store: Weak<Inner>,
    resign: Arc<tokio::sync::Notify>,
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
        let term = Term {
            store: &store,
            resign: &resign,
            client: &client,
            key: &key,
            ttl,
            identity: &identity,
            leading: &leading,
        };
        let ended = term.run().await;
        if let Some(inner) = store.upgrade() {
            // Whoever leads next is not known yet.
            *lock(&inner.leader_contact) = None;
        }
        if let Ok(Ended::Resigned) = ended {
            if leading.send_replace(false) {
                tracing::info!("no longer leading: resigned (shutting down)");
            }
            return;
        }
        if leading.send_replace(false) {
            match &ended {
                Ok(_) => tracing::info!("no longer leading: the store is shutting down"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "no longer leading: the lease could not be kept; the work done once stops here"
                ),
            }
        } else if let Err(e) = ended {
            tracing::debug!(error = %e, "leader election: retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = resign.notified() => return,
        }
    }
}

/// Why a term ended without an error.
enum Ended {
    StoreGone,
    Resigned,
}

/// One lease's worth of campaigning and leading.
struct Term<'a> {
    store: &'a Weak<Inner>,
    resign: &'a tokio::sync::Notify,
    client: &'a Client,
    key: &'a [u8],
    ttl: Duration,
    identity: &'a str,
    leading: &'a watch::Sender<bool>,
}

impl Term<'_> {
    /// Try to take the key until this replica holds it, then hold it while renewals answer.
    /// Ends (revoking the lease) when one does not, on `resign`, or when the store is gone.
    async fn run(&self) -> Result<Ended, StoreError> {
        let mut leases = self.client.lease_client();
        let ttl_seconds = self.ttl.as_secs().max(2) as i64;
        let lease = timeout(leases.grant(ttl_seconds, None)).await?.id();
        let held = self.hold(lease).await;
        // Stepping down: the next leader need not wait out the lease (best effort: when etcd
        // does not answer, the lease ends by itself).
        let _ = bounded(self.ttl / 3, leases.revoke(lease)).await;
        held
    }

    async fn hold(&self, lease: i64) -> Result<Ended, StoreError> {
        let (key, identity, leading) = (self.key, self.identity, self.leading);
        // Renewed three times per lease: a renewal that fails or waits past the next one's
        // time ends the term with a third of the lease to spare.
        let renew_every = self.ttl / 3;
        let mut leases = self.client.lease_client();
        let (mut keeper, mut renewals) = bounded(renew_every, leases.keep_alive(lease)).await?;
        let mut renew_at = Instant::now() + renew_every;
        let mut kv = self.client.kv_client();
        let mut holder = String::new();
        let Some(mut contact) = self.store.upgrade().map(|i| i.contact.subscribe()) else {
            return Ok(Ended::StoreGone);
        };
        loop {
            let Some(inner) = self.store.upgrade() else {
                return Ok(Ended::StoreGone);
            };
            let value = format!("{identity}\n{}", *contact.borrow_and_update());
            let put = || {
                TxnOp::put(
                    key.to_vec(),
                    value.clone().into_bytes(),
                    Some(PutOptions::new().with_lease(lease)),
                )
            };
            // Take the key if it is free; else read who holds it (this lease, while leading).
            let txn = Txn::new()
                .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)])
                .and_then([put()])
                .or_else([TxnOp::get(key.to_vec(), None)]);
            let done = bounded(renew_every, kv.txn(txn)).await?;
            let held_by = |done: &etcd_client::TxnResponse| {
                done.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(got) => got.kvs().first().cloned(),
                    _ => None,
                })
            };
            let current = held_by(&done);
            let ours = done.succeeded() || current.as_ref().is_some_and(|kv| kv.lease() == lease);
            if ours
                && current
                    .as_ref()
                    .is_some_and(|kv| kv.value() != value.as_bytes())
            {
                // Held since before this replica's contact changed: publish the new one, only
                // while the key is still this lease's.
                let republish = Txn::new()
                    .when([Compare::lease(key.to_vec(), CompareOp::Equal, lease)])
                    .and_then([put()]);
                bounded(renew_every, kv.txn(republish)).await?;
            }
            let (held_identity, held_contact) = current
                .as_ref()
                .map(|kv| {
                    let value = String::from_utf8_lossy(kv.value());
                    match value.split_once('\n') {
                        Some((who, contact)) => (who.to_string(), contact.to_string()),
                        None => (value.into_owned(), String::new()),
                    }
                })
                .unwrap_or_default();
            *lock(&inner.leader_contact) =
                (!ours && !held_contact.is_empty()).then(|| Arc::from(held_contact));
            drop(inner);
            if ours && !leading.send_replace(true) {
                tracing::info!(
                    identity,
                    lease = format!("{lease:x}"),
                    ttl = ?self.ttl,
                    "leading: this replica now does the work done once (status refresh, retention, Released events, compaction)"
                );
            }
            if !ours {
                if leading.send_replace(false) {
                    // Another replica holds the key while our lease lives: it was deleted by
                    // hand.
                    tracing::warn!("no longer leading: the leader key is held by another replica");
                }
                if held_identity != holder {
                    tracing::info!(leader = held_identity, "following");
                    holder = held_identity;
                }
            }
            let wake = if ours {
                renew_at
            } else {
                renew_at.min(Instant::now() + RETRY)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.resign.notified() => return Ok(Ended::Resigned),
                // A new contact is published at once while leading.
                Ok(()) = contact.changed(), if ours => {}
            }
            if Instant::now() >= renew_at {
                let sent = Instant::now();
                renew(&mut keeper, &mut renewals, renew_every).await?;
                renew_at = sent + renew_every;
            }
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
    async fn a_leader_that_resigns_hands_over_without_waiting_out_its_lease() {
        let Some(etcd) = TestEtcd::start("a_leader_that_resigns_hands_over") else {
            return;
        };
        // A lease far longer than the waits below: only a handover can explain a new leader.
        let mut opts = etcd.options("/registry", 10);
        opts.leader_lease = Duration::from_secs(600);
        let a = etcd.store("/registry", 10).await;
        let mut a_leads = a.leadership();
        tokio::time::timeout(Duration::from_secs(30), a_leads.acquired())
            .await
            .expect("a lone store leads");
        let b = crate::store::EtcdStore::connect(&opts).await.expect("b");
        let mut b_leads = b.leadership();
        a.resign().await;
        assert!(!a.leadership().is_leader());
        tokio::time::timeout(Duration::from_secs(60), b_leads.acquired())
            .await
            .expect("b leads once a resigned");
        // a campaigns no more.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!a.leadership().is_leader() && b.leadership().is_leader());
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
