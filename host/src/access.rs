//! Who may use the HTTP API, and for what: API keys, each with one role
//! (`call`, `view` or `admin`), the plugins, pipelines and topics a `call`
//! key may use, and a rate limit.
//!
//! ```toml
//! [[host.api_keys]]
//! name = "checkout"                  # who, in the audit log
//! role = "call"
//! digest = "sha256:9f86d08…"         # of the key; `capsule api-key` makes both
//! plugins = ["hello", "shop-*"]      # exact names, a prefix and `*`, or `*`
//! pipelines = ["ingest"]
//! topics = ["orders.>"]              # events it may publish
//! rate = "100/s"                     # also `/min`, `/h`; `burst` defaults to the count
//! ```
//!
//! A key is 256 random bits (`capsule_` and 64 hex digits); the host keeps
//! only its SHA-256 digest, which is cheap to check on every request (a
//! slow password hash would only slow down requests: the key is not a
//! password a person chose, so it cannot be guessed from its digest).
//!
//! Roles: `admin` may do everything; `view` reads (plugins, metrics, the
//! cluster, dead letters); `call` calls the plugins and pipelines its scope
//! names and publishes to its topics, nothing else. Keys rotate by policy
//! apply: the table is replaced as a whole, and a key whose digest and
//! rate did not change keeps its rate-limit state.
//!
//! Budgets: the table holds at most [`MAX_API_KEYS`] keys; each has one
//! token bucket (a few words); checking a request hashes the presented
//! credential (cut at [`MAX_CREDENTIAL_BYTES`]) once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::services::events::TopicPattern;

/// At most this many keys in a policy.
pub const MAX_API_KEYS: usize = 1024;

/// A presented credential longer than this is refused without hashing.
pub const MAX_CREDENTIAL_BYTES: usize = 512;

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Calls the plugins, pipelines and topics in its scope.
    Call,
    /// Reads: plugins (grants by name only), metrics, cluster, dead letters.
    View,
    /// Everything, including host paths and every administrative action.
    Admin,
}

impl Role {
    /// Reads a role as the policy writes it.
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "call" => Ok(Role::Call),
            "view" => Ok(Role::View),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "`{other}` is not a role: `call`, `view` or `admin`"
            )),
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Call => "call",
            Role::View => "view",
            Role::Admin => "admin",
        }
    }
}

/// A plugin or pipeline name a key may use: exact, a prefix ending in `*`,
/// or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    /// Reads a name pattern.
    pub fn parse(text: &str) -> Result<NamePattern, String> {
        let literal = text.strip_suffix('*').unwrap_or(text);
        let valid = text.len() <= 65
            && !literal.contains('*')
            && literal
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !text.is_empty();
        if valid {
            Ok(NamePattern(text.to_owned()))
        } else {
            Err(format!(
                "`{text}` is not a name pattern: a plugin or pipeline name, a prefix ending in \
                 `*`, or `*`"
            ))
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many requests a key may make: `count` per `per`, in bursts of at
/// most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
    /// Requests that may come at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// Reads `N/s`, `N/min` or `N/h`; the burst is `N` unless given.
    pub fn parse(text: &str, burst: Option<u32>) -> Result<Rate, String> {
        let invalid = || format!("`{text}` is not a rate: write e.g. `100/s`, `600/min` or `50/h`");
        let (count, unit) = text.trim().split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        if count == 0 {
            return Err(format!(
                "`{text}`: a rate of zero would refuse every request"
            ));
        }
        let burst = burst.unwrap_or(count);
        if burst == 0 {
            return Err("`burst` must be at least 1".to_owned());
        }
        Ok(Rate { count, per, burst })
    }

    /// The rate as the policy writes it.
    pub fn describe(&self) -> String {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        format!("{}/{unit}", self.count)
    }
}

/// One `[[host.api_keys]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Who holds it: shown in the audit log and in 403 answers.
    pub name: String,
    /// SHA-256 of the key.
    pub digest: [u8; 32],
    /// What it is for.
    pub role: Role,
    /// Plugins a `call` key may call.
    pub plugins: Vec<NamePattern>,
    /// Pipelines a `call` key may call.
    pub pipelines: Vec<NamePattern>,
    /// Topics a `call` key may publish to.
    pub topics: Vec<TopicPattern>,
    /// How often it may be used; `None`: no limit.
    pub rate: Option<Rate>,
}

/// What a request wants to do, for [`ApiKey::permits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Call a plugin.
    CallPlugin(&'a str),
    /// Call a pipeline.
    CallPipeline(&'a str),
    /// Publish an event on a topic.
    Publish(&'a str),
    /// Read what the host runs (plugins, metrics, cluster).
    Read,
    /// Read what passed through it (dead letters).
    Inspect,
    /// Change what runs, or read the audit log.
    Admin,
}

impl Action<'_> {
    /// Whether a host without API keys lets anyone do this (calls and
    /// reads, as before keys existed); the rest needs the admin token.
    pub fn open_without_keys(self) -> bool {
        matches!(
            self,
            Action::CallPlugin(_) | Action::CallPipeline(_) | Action::Read
        )
    }
}

impl ApiKey {
    /// Whether this key may do `action`.
    pub fn permits(&self, action: Action<'_>) -> bool {
        match (self.role, action) {
            (Role::Admin, _) => true,
            (Role::View, Action::Read | Action::Inspect) => true,
            (Role::Call, Action::CallPlugin(name)) => self.plugins.iter().any(|p| p.matches(name)),
            (Role::Call, Action::CallPipeline(name)) => {
                self.pipelines.iter().any(|p| p.matches(name))
            }
            (Role::Call, Action::Publish(topic)) => self.topics.iter().any(|p| p.matches(topic)),
            _ => false,
        }
    }
}

/// Reads `sha256:<64 hex digits>`.
pub fn parse_digest(text: &str) -> Result<[u8; 32], String> {
    // The value is never repeated: an operator who pasted the key itself
    // would see it again in every error output.
    if text.starts_with("capsule_") {
        return Err(
            "this is an API key, not its digest: the policy must hold only the digest \
                    (`capsule api-key` prints it); make a new key, this one was exposed"
                .to_owned(),
        );
    }
    let invalid = || {
        "not a key digest: write `sha256:` and 64 hex digits (`capsule api-key` prints it)"
            .to_owned()
    };
    let hex = text.strip_prefix("sha256:").ok_or_else(invalid)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    Ok(digest)
}

/// The digest the policy stores for `key`, as `sha256:<hex>`.
pub fn digest_of(key: &str) -> String {
    format!("sha256:{}", crate::artifact::sha256_hex(key.as_bytes()))
}

/// A new key: `capsule_` and 256 random bits as hex.
pub fn generate_key() -> Result<String, String> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|err| format!("no randomness: {err}"))?;
    Ok(format!("capsule_{}", crate::artifact::hex(&random)))
}

/// A key's token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// One key as the running host holds it.
#[derive(Debug)]
pub struct KeyState {
    /// The policy's entry.
    pub key: ApiKey,
    /// Shared with the key's next entry when an apply changes its scope
    /// but not its digest or rate: editing an entry is no fresh burst.
    bucket: Option<Arc<Mutex<Bucket>>>,
}

impl KeyState {
    fn new(key: ApiKey) -> KeyState {
        let bucket = key.rate.map(|rate| {
            Arc::new(Mutex::new(Bucket {
                tokens: f64::from(rate.burst),
                refilled: Instant::now(),
            }))
        });
        KeyState { key, bucket }
    }

    /// Takes one request from the key's rate; `Err` says when the next one
    /// will be allowed.
    pub fn take(&self) -> Result<(), Duration> {
        self.take_many(1)
    }

    /// Takes `count` requests' worth of the key's rate at once (a batch's
    /// items), or none of it; when there is not enough, how long until
    /// there is. A count beyond the burst can never be taken.
    pub fn take_many(&self, count: u32) -> Result<(), Duration> {
        let (Some(rate), Some(bucket)) = (self.key.rate, &self.bucket) else {
            return Ok(());
        };
        let per_second = f64::from(rate.count) / rate.per.as_secs_f64();
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(f64::from(rate.burst));
        bucket.refilled = now;
        let wanted = f64::from(count);
        if bucket.tokens >= wanted {
            bucket.tokens -= wanted;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (wanted - bucket.tokens) / per_second,
            ))
        }
    }
}

/// The keys a running host accepts, by digest.
#[derive(Debug, Default)]
pub struct AccessTable {
    keys: HashMap<[u8; 32], Arc<KeyState>>,
}

impl AccessTable {
    /// A table of `keys`.
    pub fn new(keys: &[ApiKey]) -> AccessTable {
        AccessTable::default().rotated(keys)
    }

    /// The table for `keys`; a key whose digest and rate did not change
    /// keeps its rate-limit state.
    pub fn rotated(&self, keys: &[ApiKey]) -> AccessTable {
        let keys = keys
            .iter()
            .map(|key| {
                let state = match self.keys.get(&key.digest) {
                    Some(kept) if kept.key == *key => Arc::clone(kept),
                    Some(kept) if kept.key.rate == key.rate => Arc::new(KeyState {
                        key: key.clone(),
                        bucket: kept.bucket.clone(),
                    }),
                    _ => Arc::new(KeyState::new(key.clone())),
                };
                (key.digest, state)
            })
            .collect();
        AccessTable { keys }
    }

    /// Whether any key is configured (then every route but `/healthz` and `/readyz`
    /// needs one).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key `presented` is, if the policy has it.
    pub fn find(&self, presented: &str) -> Option<Arc<KeyState>> {
        if presented.len() > MAX_CREDENTIAL_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.keys.get(&digest).cloned()
    }

    /// The key whose digest is `digest`, if the policy still has it (a
    /// console session keeps the digest, never the key).
    pub fn find_digest(&self, digest: &[u8; 32]) -> Option<Arc<KeyState>> {
        self.keys.get(digest).cloned()
    }

    /// Names of the keys that differ between the two tables (added,
    /// changed or removed), sorted.
    pub fn changed_from(&self, before: &AccessTable) -> Vec<String> {
        let mut changed: Vec<String> = self
            .keys
            .iter()
            .filter(|(digest, state)| {
                before
                    .keys
                    .get(*digest)
                    .is_none_or(|old| !Arc::ptr_eq(old, state))
            })
            .map(|(_, state)| state.key.name.clone())
            .chain(
                before
                    .keys
                    .iter()
                    .filter(|(digest, _)| !self.keys.contains_key(*digest))
                    .map(|(_, state)| state.key.name.clone()),
            )
            .collect();
        changed.sort();
        changed.dedup();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role) -> ApiKey {
        ApiKey {
            name: "k".into(),
            digest: [7; 32],
            role,
            plugins: vec![
                NamePattern::parse("hello").unwrap(),
                NamePattern::parse("shop-*").unwrap(),
            ],
            pipelines: vec![NamePattern::parse("ingest").unwrap()],
            topics: vec![TopicPattern::parse("orders.>").unwrap()],
            rate: None,
        }
    }

    #[test]
    fn roles_permit_what_they_say() {
        let call = key(Role::Call);
        assert!(call.permits(Action::CallPlugin("hello")));
        assert!(call.permits(Action::CallPlugin("shop-cart")));
        assert!(!call.permits(Action::CallPlugin("hello2")));
        assert!(!call.permits(Action::CallPlugin("shop")));
        assert!(call.permits(Action::CallPipeline("ingest")));
        assert!(!call.permits(Action::CallPipeline("hello")));
        assert!(call.permits(Action::Publish("orders.created")));
        assert!(!call.permits(Action::Publish("payments.created")));
        assert!(!call.permits(Action::Read));
        assert!(!call.permits(Action::Admin));
        let view = key(Role::View);
        assert!(view.permits(Action::Read) && view.permits(Action::Inspect));
        assert!(!view.permits(Action::CallPlugin("hello")));
        assert!(!view.permits(Action::Admin));
        let admin = key(Role::Admin);
        assert!(admin.permits(Action::Admin) && admin.permits(Action::CallPlugin("any")));
    }

    #[test]
    fn patterns_and_rates_parse_or_say_why_not() {
        assert!(NamePattern::parse("*").unwrap().matches("anything"));
        for bad in ["", "a*b", "**", "a b", &"x".repeat(70)] {
            assert!(NamePattern::parse(bad).is_err(), "{bad}");
        }
        let rate = Rate::parse("600/min", None).unwrap();
        assert_eq!(
            (rate.count, rate.per, rate.burst),
            (600, Duration::from_secs(60), 600)
        );
        assert_eq!(rate.describe(), "600/min");
        for bad in ["100", "0/s", "10/week", "x/s"] {
            assert!(Rate::parse(bad, None).is_err(), "{bad}");
        }
        assert!(Rate::parse("1/s", Some(0)).is_err());
    }

    #[test]
    fn a_key_is_found_by_its_digest_only() {
        let secret = generate_key().unwrap();
        assert!(secret.starts_with("capsule_") && secret.len() == 8 + 64);
        let mut entry = key(Role::Call);
        entry.digest = parse_digest(&digest_of(&secret)).unwrap();
        let table = AccessTable::new(&[entry]);
        assert!(table.find(&secret).is_some());
        assert!(table.find(&digest_of(&secret)).is_none());
        assert!(table.find("capsule_0000").is_none());
        assert!(parse_digest("sha256:abc").is_err());
        // Multi-byte text of the right length, a sign: refused, no panic.
        assert!(parse_digest(&format!("sha256:é{}", "0".repeat(62))).is_err());
        assert!(parse_digest(&format!("sha256:+{}", "0".repeat(63))).is_err());
        let pasted = parse_digest(&secret).unwrap_err();
        assert!(
            !pasted.contains(&secret) && pasted.contains("not its digest"),
            "{pasted}"
        );
        assert!(parse_digest(&"0".repeat(71)).is_err());
    }

    #[test]
    fn the_bucket_refuses_past_the_burst_and_rotation_keeps_it() {
        let mut entry = key(Role::Call);
        entry.rate = Some(Rate::parse("2/h", None).unwrap());
        let table = AccessTable::new(std::slice::from_ref(&entry));
        let state = table.keys.get(&entry.digest).unwrap();
        assert!(state.take().is_ok() && state.take().is_ok());
        let wait = state.take().unwrap_err();
        assert!(wait > Duration::from_secs(60) && wait <= Duration::from_secs(1800));
        // The same key after an apply: still spent. A changed key: fresh.
        let same = table.rotated(std::slice::from_ref(&entry));
        assert!(same.keys.get(&entry.digest).unwrap().take().is_err());
        assert!(same.changed_from(&table).is_empty());
        // Another scope, the same rate: changed, and still spent.
        entry.plugins.push(NamePattern::parse("other").unwrap());
        let rescoped = same.rotated(std::slice::from_ref(&entry));
        assert!(rescoped.keys.get(&entry.digest).unwrap().take().is_err());
        assert_eq!(rescoped.changed_from(&same), vec!["k".to_owned()]);
        let same = rescoped;
        entry.rate = Some(Rate::parse("3/h", None).unwrap());
        let changed = same.rotated(std::slice::from_ref(&entry));
        assert!(changed.keys.get(&entry.digest).unwrap().take().is_ok());
        assert_eq!(changed.changed_from(&same), vec!["k".to_owned()]);
        assert_eq!(
            AccessTable::default().changed_from(&changed),
            vec!["k".to_owned()]
        );
    }
}
