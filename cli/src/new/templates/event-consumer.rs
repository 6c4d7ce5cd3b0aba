//! __NAME__: a Capsule plugin that consumes events.
//!
//! - Every event on a subscribed topic is counted in the plugin's kv
//!   namespace under `count.<topic>` and acknowledged. A payload that is not
//!   JSON is rejected: Capsule keeps it as a dead letter with the reason.
//! - `count` with `{"topic": "orders.created"}` answers
//!   `{"topic": "orders.created", "count": 2}`.
//!
//! It needs two grants (see `capsule.toml`): `events.subscribe` for the
//! topics it receives and a `kv` namespace for the counts.

use capsule_guest::{
    Event, EventOutcome, Plugin, PluginError, Request, Response, export_plugin, kv, log,
};
use serde::{Deserialize, Serialize};

/// The input of `count`.
#[derive(Deserialize)]
struct CountIn {
    topic: String,
}

/// The output of `count`.
#[derive(Serialize)]
struct CountOut {
    topic: String,
    count: i64,
}

fn key(topic: &str) -> String {
    format!("count.{topic}")
}

fn count(input: CountIn) -> Result<CountOut, PluginError> {
    let count = kv::get(&key(&input.topic))?
        .map(|bytes| {
            <[u8; 8]>::try_from(bytes.as_slice())
                .map(i64::from_le_bytes)
                .map_err(|_| PluginError::Failed("the stored count is not a counter".into()))
        })
        .transpose()?
        .unwrap_or(0);
    Ok(CountOut {
        topic: input.topic,
        count,
    })
}

struct __TYPE__;

impl Plugin for __TYPE__ {
    fn handle(request: Request) -> Result<Response, PluginError> {
        request.dispatch().json("count", count).finish()
    }

    fn on_event(event: Event) -> Result<EventOutcome, PluginError> {
        // Any JSON is accepted; `IgnoredAny` checks it without keeping it.
        if let Err(err) = event.json::<serde::de::IgnoredAny>() {
            return Ok(EventOutcome::Reject(format!("not JSON: {err:?}")));
        }
        let total = kv::increment(&key(&event.topic), 1)?;
        log::info!("{} events on {}", total, event.topic);
        Ok(EventOutcome::Ack)
    }
}

export_plugin!(__TYPE__);

// `cargo test --target <your host triple>` (see README.md) runs the plugin
// natively against `MockHost`, a fake of every host service.
#[cfg(test)]
mod tests {
    use capsule_guest::testing::MockHost;

    use super::*;

    fn event(topic: &str, payload: &str) -> Event {
        Event {
            topic: topic.into(),
            payload: payload.into(),
            metadata: Vec::new(),
        }
    }

    #[test]
    fn events_are_counted_per_topic() {
        let host = MockHost::new().kv();
        for _ in 0..2 {
            let outcome = host.deliver::<__TYPE__>(event("orders.created", r#"{"id": 7}"#));
            assert_eq!(outcome, Ok(EventOutcome::Ack));
        }
        let answer = host
            .call::<__TYPE__>(Request::new("count", r#"{"topic": "orders.created"}"#))
            .unwrap();
        assert_eq!(answer.payload, br#"{"topic":"orders.created","count":2}"#);
    }

    #[test]
    fn a_payload_that_is_not_json_is_rejected() {
        let host = MockHost::new().kv();
        let outcome = host.deliver::<__TYPE__>(event("orders.created", "not json"));
        assert!(matches!(outcome, Ok(EventOutcome::Reject(_))), "{outcome:?}");
        assert!(host.kv_keys().is_empty());
    }

    #[test]
    fn without_a_kv_grant_the_event_fails() {
        let outcome = MockHost::new().deliver::<__TYPE__>(event("orders.created", "{}"));
        assert!(matches!(outcome, Err(PluginError::Denied(_))), "{outcome:?}");
    }
}
