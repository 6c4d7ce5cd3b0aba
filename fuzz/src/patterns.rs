//! `patterns`: the topic, origin and name patterns policies and API keys
//! are written with.

use arbitrary::{Arbitrary, Unstructured};
use capsule_host::access::NamePattern;
use capsule_host::services::events::{TopicPattern, validate_topic};
use capsule_host::services::http::OriginPattern;

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "patterns",
    about: "parse topic, origin and name patterns and match them: what parses prints back to \
            itself, topic matching agrees with a plain reference matcher, a concrete topic \
            matches itself, a wildcard origin never allows its bare domain",
    check,
    seeds: || {
        vec![
            b"\x05orders.*\x0eorders.created\x19https://*.example.org:8443\x03api\x08\x00a.b.c"
                .to_vec(),
            b"\x05audit.>\x0baudit.x.y.z\x17http://[::1]:8080/\x01*\x01x".to_vec(),
        ]
    },
};

#[derive(Arbitrary, Debug)]
struct Input {
    pattern: String,
    topic: String,
    origin: String,
    host: String,
    port: u16,
    name_pattern: String,
    name: String,
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
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
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
        let bare = host.trim_start_matches("*.");
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
