//! `ledger`: transfers with compare-and-swap never create or lose money,
//! with per-call transactions or without, however many run at once.

use capsule_host::services::kv::KvGrant;
use capsule_host::{Grants, Host, Limits, PluginError, PluginSpec};
use capsule_tests::plugin_path;
use capsule_tests::plugins::LEDGER;
use serde_json::json;

use crate::grants::{call_json, plugin_error};

const ACCOUNTS: [&str; 4] = ["ada", "bob", "cy", "dee"];

async fn ledger(atomic: bool) -> Host {
    let host = crate::host();
    let grants = Grants {
        kv: Some(KvGrant {
            atomic,
            ..KvGrant::new("ledger")
        }),
        ..Grants::default()
    };
    let limits = Limits {
        max_instances: 8,
        ..Limits::default()
    };
    host.load(
        PluginSpec::from_path(plugin_path(LEDGER))
            .grants(grants)
            .limits(limits),
    )
    .await
    .unwrap();
    for account in ACCOUNTS {
        call_json(
            &host,
            LEDGER,
            "open",
            json!({"account": account, "cents": 1000}),
        )
        .await;
    }
    host
}

async fn balances(host: &Host) -> Vec<u64> {
    let mut balances = Vec::new();
    for account in ACCOUNTS {
        let out = call_json(host, LEDGER, "balance", json!({ "account": account })).await;
        balances.push(out["cents"].as_u64().unwrap());
    }
    balances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_keep_the_total() {
    for atomic in [true, false] {
        let host = ledger(atomic).await;
        let moved = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let host = host.clone();
                let moved = std::sync::Arc::clone(&moved);
                tokio::spawn(async move {
                    for i in 0..25 {
                        let from = ACCOUNTS[(task + i) % 4];
                        let to = ACCOUNTS[(task + i + 1 + i % 3) % 4];
                        let input = json!({"from": from, "to": to, "cents": 7 + i});
                        let request = capsule_host::Request::new("transfer", input.to_string());
                        match host.call(LEDGER, request).await {
                            Ok(_) => {
                                moved.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            // An overdraft is the ledger's answer, not a loss.
                            Err(err) if err.kind().as_str() == "plugin_error" => {}
                            Err(err) => panic!("atomic = {atomic}: {err}"),
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let balances = balances(&host).await;
        assert_eq!(
            balances.iter().sum::<u64>(),
            4000,
            "atomic = {atomic}: {balances:?}"
        );
        assert!(
            moved.load(std::sync::atomic::Ordering::Relaxed) > 100,
            "money moved"
        );
    }
}

#[tokio::test]
async fn overdrafts_and_unknown_accounts_are_refused() {
    let host = ledger(true).await;
    let err = plugin_error(
        &host,
        LEDGER,
        "transfer",
        json!({"from": "ada", "to": "bob", "cents": 1001}),
    )
    .await;
    assert!(
        matches!(&err, PluginError::InvalidInput(m) if m.contains("1000")),
        "{err:?}"
    );
    let err = plugin_error(
        &host,
        LEDGER,
        "transfer",
        json!({"from": "ada", "to": "eve", "cents": 1}),
    )
    .await;
    assert!(
        matches!(&err, PluginError::InvalidInput(m) if m.contains("eve")),
        "{err:?}"
    );
    assert_eq!(balances(&host).await, [1000; 4]);
}
