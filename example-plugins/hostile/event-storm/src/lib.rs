//! Hostile: turns the event bus against the host. Granted
//! `events = { publish = ["storm.>"], subscribe = ["storm.>"] }`, it reacts
//! to its own events:
//!
//! - `storm.loop`: forwards the event to `storm.loop` again, forever;
//! - `storm.fanout`: publishes 64 copies of the event to `storm.fanout`,
//!   each of which does the same;
//! - `storm.retry`: asks for a retry after `u32::MAX` milliseconds (49 days);
//! - `storm.reject`: rejects with a reason as long as the payload says
//!   (bytes, as text), to fill the dead letters;
//! - `storm.slow`: takes 200 ms per event, so its queue fills;
//! - anything else: ack.
//!
//! Its `publish` operation publishes `{"topic", "count", "bytes"}`: `count`
//! events of `bytes` bytes each to `topic`, and answers how many the host
//! accepted.

use capsule_guest::{
    Event, EventOutcome, ForwardedEvent, Plugin, PluginError, Request, Response, events,
    export_plugin,
};

struct EventStorm;

impl Plugin for EventStorm {
    fn handle(request: Request) -> Result<Response, PluginError> {
        if request.operation != "publish" {
            return Err(PluginError::unsupported_operation(&request.operation));
        }
        let text = request.text()?;
        let field = |name: &str| -> Option<String> {
            let start = text.find(&format!("\"{name}\""))?;
            let rest = &text[start + name.len() + 2..];
            let rest = rest.trim_start().strip_prefix(':')?.trim_start();
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            Some(rest[..end].trim().trim_matches('"').to_owned())
        };
        let topic = field("topic").unwrap_or_else(|| "storm.other".into());
        let count: usize = field("count").and_then(|n| n.parse().ok()).unwrap_or(1);
        let bytes: usize = field("bytes").and_then(|n| n.parse().ok()).unwrap_or(16);
        let payload = vec![b'p'; bytes];
        let accepted = (0..count)
            .filter(|_| events::publish(&topic, &payload).is_ok())
            .count();
        Ok(Response::bytes(accepted.to_string()))
    }

    fn on_event(event: Event) -> Result<EventOutcome, PluginError> {
        match event.topic.as_str() {
            "storm.loop" => Ok(EventOutcome::Forward(ForwardedEvent {
                topic: "storm.loop".into(),
                payload: event.payload,
            })),
            "storm.fanout" => {
                for _ in 0..64 {
                    let _ = events::publish("storm.fanout", &event.payload);
                }
                Ok(EventOutcome::Ack)
            }
            "storm.retry" => Ok(EventOutcome::RetryAfter(u32::MAX)),
            "storm.reject" => {
                let len = std::str::from_utf8(&event.payload)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(1024usize);
                Ok(EventOutcome::Reject("r\n".repeat(len / 2)))
            }
            "storm.slow" => {
                std::thread::sleep(std::time::Duration::from_millis(200));
                Ok(EventOutcome::Ack)
            }
            _ => Ok(EventOutcome::Ack),
        }
    }
}

export_plugin!(EventStorm);
