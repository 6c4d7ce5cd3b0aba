//! `patterns`: the topic, origin and name patterns policies and API keys
//! are written with.

use capsule_host::access::NamePattern;
use capsule_host::services::events::{TopicPattern, validate_topic};
use capsule_host::services::http::OriginPattern;

use crate::Target;
use crate::fixtures::{fields, join};

/// The target.
pub const TARGET: Target = Target {
    name: "patterns",
    about: "parse topic, origin and name patterns and match them: what parses prints back to \
            itself, topic matching agrees with a plain reference matcher, a concrete topic \
            matches itself, a wildcard origin never allows its bare domain",
    check,
    seeds: || {
        vec![
            join(&[
                "orders.*",
                "orders.created",
                "https://*.example.org:8443",
                "a.example.org",
                "8443",
                "api-*",
                "api-v2",
            ]),
            join(&[
                "audit.>",
                "audit.x.y.z",
                "http://[::1]:8080/",
                "::1",
                "8080",
                "*",
                "x",
            ]),
            join(&[
                "a.*.c",
                "a.b.c",
                "HTTPS://API.Example.COM.",
                "api.example.com.",
                "443",
                "exact",
                "exact",
            ]),
        ]
    },
};

/// The input's fields: a topic pattern, a topic, an origin pattern, a host,
/// a port, a name pattern, a name.
struct Input {
    pattern: String,
    topic: String,
    origin: String,
    host: String,
    port: u16,
    name_pattern: String,
    name: String,
}

impl Input {
    fn read(data: &[u8]) -> Input {
        let mut f = fields(data, 7).into_iter();
        let mut next = || f.next().unwrap_or_default();
        Input {
            pattern: next(),
            topic: next(),
            origin: next(),
            host: next(),
            port: next().parse().unwrap_or(443),
            name_pattern: next(),
            name: next(),
        }
    }
}

/// NATS-style matching, written the obvious way.
fn reference_match(pattern: &[&str], topic: &[&str]) -> bool {
    match (pattern.split_first(), topic.split_first()) {
        (Some((&">", _)), Some(_)) => true,
        (Some((&"*", rest)), Some((_, topic_rest))) => reference_match(rest, topic_rest),
        (Some((literal, rest)), Some((part, topic_rest))) => {
            literal == part && reference_match(rest, topic_rest)
        }
        (None, None) => true,
        _ => false,
    }
}

fn check(data: &[u8]) {
    let input = Input::read(data);
    if let Ok(pattern) = TopicPattern::parse(&input.pattern) {
        let printed = pattern.to_string();
        assert_eq!(printed, input.pattern);
        assert_eq!(TopicPattern::parse(&printed).unwrap(), pattern);
        if validate_topic(&input.topic).is_ok() {
            let parts: Vec<&str> = printed.split('.').collect();
            let topic: Vec<&str> = input.topic.split('.').collect();
            assert_eq!(
                pattern.matches(&input.topic),
                reference_match(&parts, &topic),
                "`{printed}` against `{}`",
                input.topic
            );
        }
    }
    if validate_topic(&input.topic).is_ok() {
        let exact = TopicPattern::parse(&input.topic).expect("a topic is a pattern");
        assert!(exact.matches(&input.topic));
    }

    if let Ok(origin) = OriginPattern::parse(&input.origin) {
        let printed = origin.to_string();
        let again = OriginPattern::parse(&printed).unwrap_or_else(|err| {
            panic!(
                "`{printed}` (from `{}`) does not parse: {err}",
                input.origin
            )
        });
        assert_eq!(again, origin, "`{printed}` parses to another origin");
        let wildcard = printed.contains("://*.");
        let (scheme, rest) = printed.split_once("://").unwrap();
        let (host, port) = rest.rsplit_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        // An IPv6 literal prints in brackets; requests name it without.
        let bare = host
            .trim_start_matches("*.")
            .trim_start_matches('[')
            .trim_end_matches(']');
        assert_eq!(origin.allows(scheme, bare, port), !wildcard);
        if wildcard {
            assert!(origin.allows(scheme, &format!("a.{bare}"), port));
        }
        // A host that allows differs from the pattern's only by case, a
        // trailing dot, or (for a wildcard) a subdomain.
        if origin.allows(scheme, &input.host, input.port) {
            let host = input.host.trim_end_matches('.').to_ascii_lowercase();
            assert_eq!(input.port, port);
            if wildcard {
                assert!(
                    host.ends_with(&format!(".{bare}")),
                    "`{}` under `{printed}`",
                    input.host
                );
            } else {
                assert_eq!(host, bare);
            }
        }
    }

    if let Ok(pattern) = NamePattern::parse(&input.name_pattern) {
        assert_eq!(
            NamePattern::parse(pattern.as_str()).unwrap().as_str(),
            pattern.as_str()
        );
        if pattern.as_str() == input.name {
            assert!(pattern.matches(&input.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_parse_as_what_they_look_like() {
        for seed in (TARGET.seeds)() {
            let input = Input::read(&seed);
            TopicPattern::parse(&input.pattern).unwrap();
            validate_topic(&input.topic).unwrap();
            OriginPattern::parse(&input.origin).unwrap();
            NamePattern::parse(&input.name_pattern).unwrap();
        }
    }
}
