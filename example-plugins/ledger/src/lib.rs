//! The ledger plugin: account balances in the plugin's key-value namespace,
//! moved with compare-and-swap.
//!
//! It demonstrates `kv::compare_and_swap`: every balance change says what it
//! expects the balance to be, and retries when another call changed it
//! first, so concurrent transfers never create or lose money — whether the
//! operator runs the plugin with per-call transactions (the default: the two
//! legs of a transfer also commit together) or with `kv.atomic = false`
//! (each swap is then its own store transaction, and the loop alone keeps
//! every balance right).
//!
//! - `open` with `{"account": "ada", "cents": 10000}` creates an account
//!   (failing with `invalid-input` if it exists);
//! - `transfer` with `{"from": "ada", "to": "bob", "cents": 250}` moves an
//!   amount, failing with `invalid-input` when `from` cannot cover it or an
//!   account does not exist, and answers both new balances;
//! - `balance` with `{"account": "ada"}` answers `{"account": "ada", "cents": N}`.
//!
//! Balances are stored as decimal text under `account:<name>`.

use capsule_guest::{Plugin, PluginError, Request, Response, export_plugin, kv};
use serde::{Deserialize, Serialize};

/// Most times one balance change retries before giving up.
const MAX_SWAPS: u32 = 1000;

#[derive(Deserialize)]
struct Open {
    account: String,
    cents: u64,
}

#[derive(Deserialize)]
struct Transfer {
    from: String,
    to: String,
    cents: u64,
}

#[derive(Deserialize)]
struct Account {
    account: String,
}

#[derive(Serialize)]
struct Balance {
    account: String,
    cents: u64,
}

fn key(account: &str) -> String {
    format!("account:{account}")
}

/// The balance stored under `account`'s key, with its exact bytes (what a
/// swap must expect).
fn read(account: &str) -> Result<(u64, Vec<u8>), PluginError> {
    let bytes = kv::get(&key(account))?
        .ok_or_else(|| PluginError::InvalidInput(format!("no account `{account}`")))?;
    let cents = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| PluginError::failed(format!("account `{account}` holds no balance")))?;
    Ok((cents, bytes))
}

/// Applies `change` to `account`'s balance, retrying while other calls
/// change it first; answers the new balance.
fn update(
    account: &str,
    change: impl Fn(u64) -> Result<u64, PluginError>,
) -> Result<u64, PluginError> {
    for _ in 0..MAX_SWAPS {
        let (cents, bytes) = read(account)?;
        let next = change(cents)?;
        if kv::compare_and_swap(&key(account), Some(&bytes), next.to_string().as_bytes())? {
            return Ok(next);
        }
    }
    Err(PluginError::failed(format!(
        "account `{account}` kept changing: gave up after {MAX_SWAPS} attempts"
    )))
}

struct Ledger;

impl Plugin for Ledger {
    fn handle(request: Request) -> Result<Response, PluginError> {
        request
            .dispatch()
            .json("open", |input: Open| {
                let opened = kv::compare_and_swap(
                    &key(&input.account),
                    None,
                    input.cents.to_string().as_bytes(),
                )?;
                if !opened {
                    return Err(PluginError::InvalidInput(format!(
                        "account `{}` exists",
                        input.account
                    )));
                }
                Ok(Balance {
                    account: input.account,
                    cents: input.cents,
                })
            })
            .json("transfer", |input: Transfer| {
                if input.from == input.to {
                    return Err(PluginError::InvalidInput(
                        "a transfer needs two different accounts".into(),
                    ));
                }
                // Both accounts must exist before money moves.
                read(&input.to)?;
                let from = update(&input.from, |cents| {
                    cents.checked_sub(input.cents).ok_or_else(|| {
                        PluginError::InvalidInput(format!(
                            "`{}` holds {cents} cents, not {}",
                            input.from, input.cents
                        ))
                    })
                })?;
                let to = update(&input.to, |cents| {
                    cents
                        .checked_add(input.cents)
                        .ok_or_else(|| PluginError::failed("balance overflow"))
                })?;
                Ok(vec![
                    Balance {
                        account: input.from,
                        cents: from,
                    },
                    Balance {
                        account: input.to,
                        cents: to,
                    },
                ])
            })
            .json("balance", |input: Account| {
                let (cents, _) = read(&input.account)?;
                Ok(Balance {
                    account: input.account,
                    cents,
                })
            })
            .finish()
    }
}

export_plugin!(Ledger);

#[cfg(test)]
mod tests {
    use capsule_guest::testing::MockHost;

    use super::*;

    fn call(host: &MockHost, op: &str, input: &str) -> Result<Response, PluginError> {
        host.call::<Ledger>(Request::new(op, input))
    }

    #[test]
    fn transfers_move_money_and_refuse_overdrafts() {
        let host = MockHost::new().kv();
        call(&host, "open", r#"{"account":"ada","cents":1000}"#).unwrap();
        call(&host, "open", r#"{"account":"bob","cents":0}"#).unwrap();
        assert!(call(&host, "open", r#"{"account":"bob","cents":5}"#).is_err());
        call(
            &host,
            "transfer",
            r#"{"from":"ada","to":"bob","cents":300}"#,
        )
        .unwrap();
        let err = call(
            &host,
            "transfer",
            r#"{"from":"bob","to":"ada","cents":301}"#,
        )
        .unwrap_err();
        assert!(matches!(err, PluginError::InvalidInput(_)), "{err:?}");
        assert_eq!(host.kv_value("account:ada").as_deref(), Some(&b"700"[..]));
        assert_eq!(host.kv_value("account:bob").as_deref(), Some(&b"300"[..]));
        let err = call(&host, "transfer", r#"{"from":"ada","to":"eve","cents":1}"#).unwrap_err();
        assert!(matches!(err, PluginError::InvalidInput(_)), "{err:?}");
    }
}
