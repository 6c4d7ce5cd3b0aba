//! The `events` service: publishing is allowed only to topics matching a
//! pattern the operator granted. Accepted events are recorded with the call
//! (delivery to subscribers is the event bus's job).
//!
//! Topics are dot-separated segments of ASCII letters, digits, `-` and `_`
//! (`orders.created`). Patterns follow NATS: `*` matches exactly one segment,
//! and a final `>` matches one or more trailing segments (`orders.>`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime::component::{HasData, Linker};

use super::transaction::{SharedTransaction, lock};
use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::bounds::Invalid;
use crate::contract::{ServiceError, interfaces, interfaces_v0_2};
use crate::limits::Limits;
use crate::outcome::PublishedEvent;
use crate::units::value_from_str;

/// A topic pattern such as `orders.*` or `audit.>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct TopicPattern {
    segments: Vec<String>,
}

impl From<TopicPattern> for String {
    fn from(pattern: TopicPattern) -> String {
        pattern.to_string()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks a concrete topic name.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.len() > 255 {
        return Err(format!("topic of {} bytes is longer than 255", topic.len()));
    }
    if !topic.split('.').all(valid_segment) {
        return Err(format!(
            "`{topic}` is not a topic: use dot-separated segments of letters, digits, `-` and `_`"
        ));
    }
    Ok(())
}

impl TopicPattern {
    /// Parses a pattern; `*` stands for one segment, a final `>` for the rest.
    pub fn parse(pattern: &str) -> Result<TopicPattern, String> {
        let segments: Vec<String> = pattern.split('.').map(str::to_owned).collect();
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            let ok = valid_segment(segment) || segment == "*" || (segment == ">" && i == last);
            if !ok {
                return Err(format!(
                    "`{pattern}` is not a topic pattern: use dot-separated segments of letters, \
                     digits, `-`, `_`, `*` (one segment) or a final `>` (the rest)"
                ));
            }
        }
        Ok(TopicPattern { segments })
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for segment in &self.segments {
            match (segment.as_str(), parts.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (literal, Some(part)) if literal == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

value_from_str!(TopicPattern, "a topic pattern such as \"orders.*\"", |s| {
    TopicPattern::parse(s)
});

/// Which topics a plugin may publish to and receive from, and whether it
/// receives its events strictly in order; a policy file writes
/// `events = { publish = ["counter.*"], subscribe = ["orders.>"], ordered = true }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsGrant {
    /// Patterns of topics the plugin may publish to.
    #[serde(default)]
    pub publish: Vec<TopicPattern>,
    /// Patterns of topics delivered to the plugin's `on-event`.
    #[serde(default)]
    pub subscribe: Vec<TopicPattern>,
    /// Deliver the plugin's events one at a time in the order they were
    /// published: an event to be retried holds back every later one until
    /// it is handled or becomes a dead letter (with the NATS backend, across
    /// all hosts: the plugin has one event in flight in the deployment).
    /// Later events that do not fit the plugin's queue meanwhile become dead
    /// letters. Off by default: a retry waits aside while later events go
    /// on.
    #[serde(default)]
    pub ordered: bool,
}

impl EventsGrant {
    /// Whether the plugin may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }

    /// Whether events on `topic` may be delivered to the plugin.
    pub fn may_receive(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(topic))
    }
}

/// Most events one call may publish.
const MAX_EVENTS_PER_CALL: usize = 256;

/// Per-store state of the `events` service.
pub(crate) struct EventsState {
    pub(crate) grant: Arc<EventsGrant>,
    denials: Arc<super::Denials>,
    /// The plugin, which the events are published as.
    plugin: Arc<str>,
    /// Where a call's events wait until it commits.
    transaction: SharedTransaction,
    /// Events published during the current call.
    pub(crate) published: usize,
    /// Payload bytes the current call may still publish.
    pub(crate) budget: usize,
    /// Whether a call is running: what `init` publishes is dropped.
    in_call: bool,
    /// The call runs a pure operation: it may not publish.
    pure: bool,
    /// The running call's span, which its events name as their parent.
    trace: Option<crate::telemetry::TraceParent>,
}

impl interfaces_v0_2::events::Host for EventsState {
    fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), ServiceError> {
        interfaces::events::Host::publish(self, topic, payload)
    }
}

impl interfaces::events::Host for EventsState {
    fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), ServiceError> {
        validate_topic(&topic).map_err(ServiceError::Invalid)?;
        if self.pure {
            let message = "the operation is declared pure: it may not publish events";
            self.denials.record("events", message);
            return Err(ServiceError::Denied(message.into()));
        }
        if !self.grant.may_publish(&topic) {
            let message = format!("publishing to `{topic}` was not granted to this plugin");
            self.denials.record("events", &message);
            return Err(ServiceError::Denied(message));
        }
        if self.published >= MAX_EVENTS_PER_CALL || payload.len() > self.budget {
            return Err(ServiceError::QuotaExceeded(format!(
                "a call may publish at most {MAX_EVENTS_PER_CALL} events within its output limit"
            )));
        }
        self.budget -= payload.len();
        self.published += 1;
        if self.in_call {
            lock(&self.transaction).publish(
                &self.plugin,
                PublishedEvent {
                    topic,
                    payload,
                    trace: self.trace,
                },
            );
        }
        Ok(())
    }
}

/// The `events` service.
pub(crate) struct Events;

struct EventsData;

impl HasData for EventsData {
    type Data<'a> = &'a mut EventsState;
}

impl Service for Events {
    const NAME: &'static str = "events";
    const IMPORTS: &'static [Import] = &[Import::contract("events")];
    const BUDGETS: &'static str = "per call: 256 events within `max_response` bytes \
        (`quota-exceeded` past them); delivery is the event bus's, with its own budgets";

    type Grant = EventsGrant;
    type Policy = EventsGrant;
    type Summary = EventsGrant;
    type Prepared = Arc<EventsGrant>;
    type State = EventsState;

    fn from_policy(
        grant: EventsGrant,
        _context: &PolicyContext<'_>,
    ) -> Result<EventsGrant, Invalid> {
        Ok(grant)
    }

    fn validate(_grant: &EventsGrant) -> Result<(), Invalid> {
        // Patterns are checked when they are parsed.
        Ok(())
    }

    fn availability(grant: &EventsGrant) -> Availability {
        Availability::granted_if(!grant.publish.is_empty())
    }

    fn summary(grant: &EventsGrant) -> EventsGrant {
        grant.clone()
    }

    fn prepare(
        grant: &EventsGrant,
        _context: &PrepareContext<'_>,
    ) -> Result<Arc<EventsGrant>, String> {
        Ok(Arc::new(grant.clone()))
    }

    fn new_state(
        grant: &Arc<EventsGrant>,
        store: &mut StoreContext<'_>,
    ) -> Result<EventsState, String> {
        Ok(EventsState {
            grant: Arc::clone(grant),
            denials: Arc::clone(store.denials),
            plugin: Arc::clone(store.plugin),
            transaction: Arc::clone(store.transaction),
            published: 0,
            budget: store.limits.max_response_bytes,
            in_call: false,
            pure: false,
            trace: None,
        })
    }

    fn begin_call(state: &mut EventsState, limits: &Limits, scope: &super::calls::CallScope) {
        // The call's span; when the host does not trace, the trace context
        // the call came with, handed on unchanged.
        state.trace = scope
            .span
            .or_else(|| crate::telemetry::parent_of(&scope.propagated));
        state.published = 0;
        state.budget = limits.max_response_bytes;
        state.in_call = true;
        state.pure = scope.pure;
    }

    fn end_call(state: &mut EventsState) {
        state.pure = false;
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces::events::add_to_linker::<T, EventsData>(linker, |store| store.state())?;
        interfaces_v0_2::events::add_to_linker::<T, EventsData>(linker, |store| store.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::contract::interfaces::events::Host as _;
    use crate::services::harness::Harness;

    #[test]
    fn patterns_match_like_nats() {
        let p = |s| TopicPattern::parse(s).unwrap();
        assert!(p("orders.created").matches("orders.created"));
        assert!(!p("orders.created").matches("orders.created.eu"));
        assert!(p("orders.*").matches("orders.created"));
        assert!(!p("orders.*").matches("orders"));
        assert!(!p("orders.*").matches("orders.created.eu"));
        assert!(p("orders.>").matches("orders.created.eu"));
        assert!(!p("orders.>").matches("orders"));
        assert!(p(">").matches("anything.at.all"));
        assert!(TopicPattern::parse("orders.>.x").is_err());
        assert!(TopicPattern::parse("orders..x").is_err());
        assert!(TopicPattern::parse("ord ers").is_err());
    }

    #[test]
    fn topics_are_validated() {
        assert!(validate_topic("a.b-c.d_e").is_ok());
        assert!(validate_topic("a.*").is_err());
        assert!(validate_topic("").is_err());
    }

    #[test]
    fn publishing_needs_a_grant_for_the_topic() {
        let mut events = Harness::<Events>::not_granted();
        let err = events
            .state
            .publish("orders.created".into(), vec![])
            .unwrap_err();
        assert!(
            matches!(&err, ServiceError::Denied(m) if m == "publishing to `orders.created` was not granted to this plugin"),
            "{err:?}"
        );
        let mut events = Harness::<Events>::from_policy(
            r#"{ publish = ["orders.*"], subscribe = [] }"#,
            Path::new("."),
        )
        .unwrap();
        events
            .state
            .publish("orders.created".into(), b"{}".to_vec())
            .unwrap();
        let denied = events
            .state
            .publish("invoices.paid".into(), vec![])
            .unwrap_err();
        assert!(matches!(denied, ServiceError::Denied(_)), "{denied:?}");
        let invalid = events
            .state
            .publish("orders..x".into(), vec![])
            .unwrap_err();
        assert!(matches!(invalid, ServiceError::Invalid(_)), "{invalid:?}");
        assert_eq!(lock(&events.transaction).events.len(), 1);
    }

    #[test]
    fn a_call_publishes_within_its_budget_and_the_next_call_starts_fresh() {
        let limits = Limits {
            max_response_bytes: 100,
            ..Limits::default()
        };
        let grant = EventsGrant {
            publish: vec![TopicPattern::parse(">").unwrap()],
            subscribe: vec![],
            ..EventsGrant::default()
        };
        let mut events = Harness::<Events>::granted(&grant, limits);
        events.state.publish("a".into(), vec![0; 60]).unwrap();
        let err = events.state.publish("a".into(), vec![0; 41]).unwrap_err();
        assert!(matches!(err, ServiceError::QuotaExceeded(_)), "{err:?}");
        events.state.publish("a".into(), vec![0; 40]).unwrap();
        for _ in 2..MAX_EVENTS_PER_CALL {
            events.state.publish("a".into(), vec![]).unwrap();
        }
        let err = events.state.publish("a".into(), vec![]).unwrap_err();
        assert!(matches!(err, ServiceError::QuotaExceeded(_)), "{err:?}");
        events.begin_call();
        assert!(lock(&events.transaction).events.is_empty());
        events.state.publish("a".into(), vec![0; 100]).unwrap();
    }
}
