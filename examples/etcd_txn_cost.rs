//! What etcd spends on writes of a given shape, to weigh the store's transactions against
//! (`docs/etcd.md`, "Measured"): TASKS writers each send transactions of PUTS puts of SIZE-byte
//! values to a fresh key prefix for SECONDS, with WATCHERS prefix watches open (with previous
//! values, as the store's). Measure etcd's CPU around it (e.g. `/proc/<pid>/stat`).
//!
//! cargo run --release --example etcd_txn_cost -- ENDPOINT SIZE PUTS TASKS SECONDS [WATCHERS]
use etcd_client::{Client, Txn, TxnOp, WatchOptions};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, size, puts, tasks, seconds, rest @ ..] = args.as_slice() else {
        return Err("usage: etcd_txn_cost ENDPOINT SIZE PUTS TASKS SECONDS [WATCHERS]".into());
    };
    let (size, puts): (usize, usize) = (size.parse()?, puts.parse()?);
    let (tasks, seconds): (usize, u64) = (tasks.parse()?, seconds.parse()?);
    let watchers: usize = rest.first().map_or(Ok(0), |w| w.parse())?;
    let client = Client::connect([endpoint.as_str()], None).await?;
    let prefix = format!("/etcd-txn-cost/{}/", std::process::id());
    for _ in 0..watchers {
        let mut watch = client.watch_client();
        let opts = WatchOptions::new().with_prefix().with_prev_key();
        let mut events = watch.watch(prefix.clone(), Some(opts)).await?;
        tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
    }
    let value = vec![b'x'; size];
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut writers = Vec::new();
    for task in 0..tasks {
        let (mut kv, value, prefix) = (client.kv_client(), value.clone(), prefix.clone());
        writers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let ops: Vec<TxnOp> = (0..puts)
                    .map(|i| TxnOp::put(format!("{prefix}{task}/{sent}/{i}"), value.clone(), None))
                    .collect();
                kv.txn(Txn::new().and_then(ops)).await?;
                sent += 1;
            }
            Ok::<u64, etcd_client::Error>(sent)
        }));
    }
    let mut txns = 0;
    for writer in writers {
        txns += writer.await??;
    }
    println!(
        "size={size} puts_per_txn={puts} watchers={watchers} txns={txns} puts_per_second={}",
        txns * puts as u64 / seconds.max(1)
    );
    Ok(())
}
