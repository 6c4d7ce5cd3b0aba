//! Pure operations: which operations of a loaded plugin version answer from
//! their operation and payload alone (its manifest's `pure` ones and those
//! the policy names), and the cache of their answers.
//!
//! The cache belongs to one loaded version, so it is never shared across
//! plugins, and everything a version fixes (its digest, configuration and
//! grants) is part of what an answer was computed under: a reload or a new
//! version starts with an empty cache, and the old one goes with the old
//! version. An entry is keyed by the operation and the SHA-256 of the
//! payload (request metadata is not part of the key: a pure operation must
//! not depend on it), lives for the plugin's `cache_ttl`, and the entries
//! together hold at most its `cache_bytes`, least recently used dropped
//! first. Only successful answers are kept.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::artifact::manifest::Manifest;
use crate::contract::{Request, Response};
use crate::limits::Limits;

/// What an entry costs beyond its operation name and response: the key's
/// hash, the timestamps and the map's own bookkeeping.
const ENTRY_OVERHEAD: usize = 128;

/// A loaded version's pure operations and, when it may keep any, the cache
/// of their answers.
pub(crate) struct PureOperations {
    names: BTreeSet<String>,
    cache: Option<Mutex<Entries>>,
    max_bytes: usize,
    ttl: Duration,
}

/// The cached answers, least recently used first out.
struct Entries {
    map: lru::LruCache<Key, Entry>,
    bytes: usize,
}

/// What an answer is kept under.
#[derive(Debug, Hash, PartialEq, Eq)]
pub(crate) struct Key {
    operation: String,
    payload: [u8; 32],
}

struct Entry {
    response: Response,
    stored: Instant,
    bytes: usize,
}

/// Why a lookup found no answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The operation is not pure: nothing was looked up.
    NotPure,
    /// Pure, but no fresh answer was kept: the answer, once the call
    /// succeeds, is [remembered](PureOperations::remember) under this key.
    Miss(Box<Key>),
    /// Pure, and the cache is off.
    Off,
}

impl PureOperations {
    /// The pure operations of a version: the manifest's and `declared` by
    /// the policy; a cache when `limits` give it room.
    pub(crate) fn new(manifest: Option<&Manifest>, declared: &[String], limits: &Limits) -> Self {
        let mut names: BTreeSet<String> = declared.iter().cloned().collect();
        if let Some(operations) = manifest.and_then(|m| m.operations.as_ref()) {
            names.extend(
                operations
                    .iter()
                    .filter(|op| op.pure)
                    .map(|op| op.name.clone()),
            );
        }
        let cache = (!names.is_empty() && limits.cache_bytes > 0).then(|| {
            Mutex::new(Entries {
                map: lru::LruCache::unbounded(),
                bytes: 0,
            })
        });
        PureOperations {
            names,
            cache,
            max_bytes: limits.cache_bytes,
            ttl: limits.cache_ttl,
        }
    }

    /// Whether `operation` is pure.
    pub(crate) fn is_pure(&self, operation: &str) -> bool {
        !self.names.is_empty() && self.names.contains(operation)
    }

    /// The pure operations, in order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The kept answer to `request`, if its operation is pure and one is
    /// fresh; else why not.
    pub(crate) fn lookup(&self, request: &Request) -> Result<Response, Lookup> {
        if !self.is_pure(&request.operation) {
            return Err(Lookup::NotPure);
        }
        let Some(cache) = &self.cache else {
            return Err(Lookup::Off);
        };
        let key = key_of(request);
        let mut entries = cache.lock().unwrap_or_else(|p| p.into_inner());
        let expired = match entries.map.get(&key) {
            Some(entry) if entry.stored.elapsed() < self.ttl => {
                return Ok(entry.response.clone());
            }
            Some(_) => true,
            None => false,
        };
        if expired && let Some(stale) = entries.map.pop(&key) {
            entries.bytes -= stale.bytes;
        }
        Err(Lookup::Miss(Box::new(key)))
    }

    /// Keeps `response`, the successful answer to the request a lookup
    /// missed under `key`, when it fits the cache; older entries make room.
    pub(crate) fn remember(&self, key: Key, response: &Response) {
        let Some(cache) = &self.cache else {
            return;
        };
        let bytes = key.operation.len() + response.size() + ENTRY_OVERHEAD;
        if bytes > self.max_bytes {
            return;
        }
        let mut entries = cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Entry {
            response: response.clone(),
            stored: Instant::now(),
            bytes,
        };
        if let Some(replaced) = entries.map.put(key, entry) {
            entries.bytes -= replaced.bytes;
        }
        entries.bytes += bytes;
        while entries.bytes > self.max_bytes {
            match entries.map.pop_lru() {
                Some((_, dropped)) => entries.bytes -= dropped.bytes,
                None => break,
            }
        }
    }

    /// Bytes the cache holds now; `None` without a cache.
    pub(crate) fn cache_bytes(&self) -> Option<usize> {
        self.cache.as_ref().map(|_| self.usage().1)
    }

    /// Answers kept now, and the bytes they hold.
    pub(crate) fn usage(&self) -> (usize, usize) {
        self.cache.as_ref().map_or((0, 0), |cache| {
            let entries = cache.lock().unwrap_or_else(|p| p.into_inner());
            (entries.map.len(), entries.bytes)
        })
    }
}

fn key_of(request: &Request) -> Key {
    Key {
        operation: request.operation.clone(),
        payload: Sha256::digest(&request.payload).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(bytes: usize, ttl: Duration) -> PureOperations {
        let limits = Limits {
            cache_bytes: bytes,
            cache_ttl: ttl,
            ..Limits::default()
        };
        PureOperations::new(None, &["price".to_owned()], &limits)
    }

    /// Looks `request` up, which must miss, and keeps `text` as its answer.
    fn remember(pure: &PureOperations, request: &Request, text: &str) {
        let Err(Lookup::Miss(key)) = pure.lookup(request) else {
            panic!("expected a miss");
        };
        let answer = Response {
            payload: text.as_bytes().to_vec(),
            metadata: Vec::new(),
        };
        pure.remember(*key, &answer);
    }

    fn missed(pure: &PureOperations, request: &Request) -> bool {
        matches!(pure.lookup(request), Err(Lookup::Miss(_)))
    }

    #[test]
    fn only_pure_operations_are_kept_by_payload() {
        let pure = cache(1 << 20, Duration::from_secs(60));
        let price = Request::new("price", "{\"item\":\"teapot\"}");
        remember(&pure, &price, "12");
        assert_eq!(pure.lookup(&price).unwrap().payload, b"12");
        // Another payload, another operation: not the same answer.
        let other = Request::new("price", "{\"item\":\"cup\"}");
        assert!(matches!(pure.lookup(&other), Err(Lookup::Miss(_))));
        let greet = Request::new("greet", "{\"item\":\"teapot\"}");
        assert_eq!(pure.lookup(&greet).unwrap_err(), Lookup::NotPure);
        assert_eq!(pure.usage().0, 1);
    }

    #[test]
    fn the_byte_bound_drops_the_least_recently_used() {
        let one = "price".len() + 1000 + ENTRY_OVERHEAD;
        let pure = cache(2 * one, Duration::from_secs(60));
        let big = "x".repeat(1000);
        let requests: Vec<Request> = (0..3)
            .map(|i| Request::new("price", format!("{i}")))
            .collect();
        remember(&pure, &requests[0], &big);
        remember(&pure, &requests[1], &big);
        // Used, so the second is the least recent when the third comes.
        assert!(pure.lookup(&requests[0]).is_ok());
        remember(&pure, &requests[2], &big);
        assert!(pure.lookup(&requests[0]).is_ok());
        assert!(missed(&pure, &requests[1]));
        assert!(pure.lookup(&requests[2]).is_ok());
        assert_eq!(pure.usage(), (2, 2 * one));
        // An answer larger than the whole cache is not kept.
        remember(&pure, &requests[1], &"y".repeat(3000));
        assert!(missed(&pure, &requests[1]));
        assert_eq!(pure.usage(), (2, 2 * one));
    }

    #[test]
    fn answers_expire_and_a_zero_budget_keeps_nothing() {
        // Fresh answers are served by the tests above (a minute's TTL).
        let pure = cache(1 << 20, Duration::from_millis(1));
        let price = Request::new("price", "1");
        remember(&pure, &price, "12");
        assert_eq!(pure.usage().0, 1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(missed(&pure, &price));
        assert_eq!(pure.usage(), (0, 0));

        let off = cache(0, Duration::from_secs(60));
        assert_eq!(off.lookup(&price).unwrap_err(), Lookup::Off);
        assert!(off.is_pure("price"));
    }
}
