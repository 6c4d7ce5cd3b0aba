//! The consumer half of the event example (`order-intake` → `order-audit`).
//!
//! It demonstrates `Plugin::on_event` and every way a subscriber can dispose
//! of an event (policy `events = { subscribe = ["orders.created"] }`):
//!
//! - **reject**: a payload that is not a JSON object with a non-empty string
//!   `order_id` is answered `reject("malformed order: <reason>")`, which the
//!   host records as a dead letter;
//! - **forward**: an order of more than 100 items on `orders.created` is
//!   republished unchanged on `orders.large` (which the operator must grant
//!   for publishing) instead of being stored;
//! - **retry-after**: an order with `"flaky": true` is answered
//!   `retry-after(20)` (or `retry_ms` of the order, up to a minute) on its
//!   first two deliveries, counted in kv under `attempts:<order_id>`, and
//!   stored on the third;
//! - **ack**: any other order is stored in kv as JSON under
//!   `order:<order_id>`, the counter `count` goes up by one, and the order's
//!   place among the stored ones is kept under `position:<order_id>`.
//!
//! Kv failures are plugin errors, so without a kv grant every delivery fails
//! (`denied`) until the host gives up on the event.
//!
//! Operations, to inspect what was stored:
//!
//! - `count` → `{"count": N}`: orders stored so far;
//! - `get` with `{"order_id": "A-1"}` → `{"order": {...}, "position": N}`
//!   (N-th stored), or `{"order": null, "position": null}` if it was never
//!   stored;
//! - `attempts` with `{"order_id": "A-1"}` → `{"attempts": N}`: deliveries of
//!   a flaky order so far.

use capsule_guest::{
    Event, EventOutcome, ForwardedEvent, Plugin, PluginError, Request, Response, export_plugin, kv,
    log,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The topic orders arrive on.
const CREATED: &str = "orders.created";
/// Where orders of more than [`LARGE`] items are forwarded.
const LARGE_TOPIC: &str = "orders.large";
/// Orders of more items than this are forwarded, not stored.
const LARGE: f64 = 100.0;
/// Deliveries of a flaky order answered with a retry before it is stored.
const FLAKY_RETRIES: i64 = 2;
/// The delay asked for with each retry, in milliseconds.
const RETRY_AFTER_MS: u32 = 20;
/// The kv counter of stored orders.
const COUNT_KEY: &str = "count";

fn order_key(order_id: &str) -> String {
    format!("order:{order_id}")
}

fn position_key(order_id: &str) -> String {
    format!("position:{order_id}")
}

fn attempts_key(order_id: &str) -> String {
    format!("attempts:{order_id}")
}

/// What to do with an event, decided from its topic and payload alone.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Dead-letter it with this reason.
    Reject(String),
    /// Republish it on [`LARGE_TOPIC`].
    Forward { order_id: String },
    /// Store it (after the retries a flaky order asks for, this many
    /// milliseconds apart).
    Store {
        order_id: String,
        order: Value,
        flaky: Option<u32>,
    },
}

fn decide(topic: &str, payload: &[u8]) -> Decision {
    let malformed = |reason: String| Decision::Reject(format!("malformed order: {reason}"));
    let order: Value = match serde_json::from_slice(payload) {
        Ok(order) => order,
        Err(err) => return malformed(format!("payload is not JSON: {err}")),
    };
    let Some(fields) = order.as_object() else {
        return malformed("payload is not a JSON object".into());
    };
    let order_id = match fields.get("order_id") {
        None => return malformed("`order_id` is missing".into()),
        Some(Value::String(id)) if id.is_empty() => {
            return malformed("`order_id` is empty".into());
        }
        Some(Value::String(id)) => id.clone(),
        Some(_) => return malformed("`order_id` must be a string".into()),
    };
    let quantity = fields.get("quantity").and_then(Value::as_f64);
    if topic == CREATED && quantity.is_some_and(|quantity| quantity > LARGE) {
        return Decision::Forward { order_id };
    }
    let retry_ms = fields
        .get("retry_ms")
        .and_then(Value::as_u64)
        .map_or(RETRY_AFTER_MS, |ms| ms.min(60_000) as u32);
    let flaky = (fields.get("flaky").and_then(Value::as_bool) == Some(true)).then_some(retry_ms);
    Decision::Store {
        order_id,
        order,
        flaky,
    }
}

/// The integer `kv::increment` keeps under `key`, or 0 when the key is
/// missing. Adding 0 reads it atomically, whatever encoding the host uses;
/// a missing key is not created, so reading spends no key quota.
fn read_counter(key: &str) -> Result<i64, PluginError> {
    Ok(match kv::get(key)? {
        None => 0,
        Some(_) => kv::increment(key, 0)?,
    })
}

#[derive(Deserialize)]
struct OrderRef {
    order_id: String,
}

#[derive(Serialize)]
struct CountOut {
    count: i64,
}

#[derive(Serialize)]
struct GetOut {
    order: Option<Value>,
    position: Option<i64>,
}

#[derive(Serialize)]
struct AttemptsOut {
    attempts: i64,
}

struct OrderAudit;

impl Plugin for OrderAudit {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .raw("count", |_| {
                Response::json(&CountOut {
                    count: read_counter(COUNT_KEY)?,
                })
            })
            .json("get", |input: OrderRef| {
                Ok(GetOut {
                    order: kv::get_json(&order_key(&input.order_id))?,
                    position: kv::get_json(&position_key(&input.order_id))?,
                })
            })
            .json("attempts", |input: OrderRef| {
                Ok(AttemptsOut {
                    attempts: read_counter(&attempts_key(&input.order_id))?,
                })
            })
            .finish()
    }

    fn on_event(event: Event) -> Result<EventOutcome, PluginError> {
        log::info!("event on `{}` ({} bytes)", event.topic, event.payload.len());
        match decide(&event.topic, &event.payload) {
            Decision::Reject(reason) => {
                log::info!("rejecting: {reason}");
                Ok(EventOutcome::Reject(reason))
            }
            Decision::Forward { order_id } => {
                log::info!("order {order_id} is large: forwarding to `{LARGE_TOPIC}`");
                Ok(EventOutcome::Forward(ForwardedEvent {
                    topic: LARGE_TOPIC.into(),
                    payload: event.payload,
                }))
            }
            Decision::Store {
                order_id,
                order,
                flaky,
            } => {
                if let Some(retry_ms) = flaky {
                    let attempt = kv::increment(&attempts_key(&order_id), 1)?;
                    if attempt <= FLAKY_RETRIES {
                        log::info!(
                            "flaky order {order_id}: attempt {attempt}, retry in {retry_ms} ms"
                        );
                        return Ok(EventOutcome::RetryAfter(retry_ms));
                    }
                }
                kv::set_json(&order_key(&order_id), &order)?;
                let count = kv::increment(COUNT_KEY, 1)?;
                kv::set_json(&position_key(&order_id), &count)?;
                log::info!("order {order_id} stored ({count} stored so far)");
                Ok(EventOutcome::Ack)
            }
        }
    }
}

export_plugin!(OrderAudit);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reason(payload: &str) -> String {
        match decide(CREATED, payload.as_bytes()) {
            Decision::Reject(reason) => reason,
            other => panic!("{payload}: expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn malformed_orders_are_rejected_with_a_reason() {
        assert!(reason("not json at all").starts_with("malformed order: payload is not JSON"));
        assert_eq!(
            reason("[1]"),
            "malformed order: payload is not a JSON object"
        );
        assert_eq!(reason("{}"), "malformed order: `order_id` is missing");
        assert_eq!(
            reason(r#"{"order_id": 7}"#),
            "malformed order: `order_id` must be a string"
        );
        assert_eq!(
            reason(r#"{"order_id": ""}"#),
            "malformed order: `order_id` is empty"
        );
    }

    #[test]
    fn large_orders_on_orders_created_are_forwarded() {
        let large = br#"{"order_id": "L-1", "quantity": 500}"#;
        assert_eq!(
            decide(CREATED, large),
            Decision::Forward {
                order_id: "L-1".into()
            }
        );
        assert!(matches!(
            decide("orders.imported", large),
            Decision::Store { .. }
        ));
        let hundred = br#"{"order_id": "L-2", "quantity": 100}"#;
        assert!(matches!(decide(CREATED, hundred), Decision::Store { .. }));
    }

    #[test]
    fn other_orders_are_stored_and_flaky_is_noticed() {
        let payload = json!({"order_id": "F-1", "item": "vase", "quantity": 1, "flaky": true});
        assert_eq!(
            decide(CREATED, payload.to_string().as_bytes()),
            Decision::Store {
                order_id: "F-1".into(),
                order: payload,
                flaky: Some(RETRY_AFTER_MS)
            }
        );
        let slow = br#"{"order_id": "S-1", "flaky": true, "retry_ms": 900000}"#;
        assert!(matches!(
            decide(CREATED, slow),
            Decision::Store {
                flaky: Some(60_000),
                ..
            }
        ));
        let plain = br#"{"order_id": "A-1", "flaky": "yes"}"#;
        assert!(matches!(
            decide(CREATED, plain),
            Decision::Store { flaky: None, .. }
        ));
    }
}
