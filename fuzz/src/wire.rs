//! `wire`: messages between the hosts of a deployment, as NATS delivers
//! them to `capsule_host::backend::wire::decode` — from any host, or
//! anything else, on the subject.

use capsule_host::backend::wire::{self, CallHead, ReplyHead, ReplyResult};

use crate::Target;

/// The target.
pub const TARGET: Target = Target {
    name: "wire",
    about: "decode any message as a call and as a reply: what decodes re-encodes to a message \
            that decodes to the same head and payload, and a payload is always within the \
            message",
    check,
    seeds: || {
        let call = CallHead {
            operation: "greet".into(),
            metadata: vec![("trace".into(), "1".into())],
            wait_ms: 2000,
            from: "host-a".into(),
        };
        let ok = ReplyHead {
            host: "host-b".into(),
            result: ReplyResult::Ok {
                metadata: Vec::new(),
                fuel_used: Some(10),
                callee_fuel: 0,
                fresh_instance: true,
                fuel_limit: Some(100),
                memory_bytes: Some(65536),
                memory_limit: 1 << 20,
                cached: false,
            },
        };
        let err = ReplyHead {
            host: "host-b".into(),
            result: ReplyResult::Err {
                kind: "plugin_error".into(),
                message: "no".into(),
                plugin_error: Some(("denied".into(), "no".into())),
            },
        };
        vec![
            wire::encode(&call, br#"{"name":"Ada"}"#),
            wire::encode(&ok, b"Hello"),
            wire::encode(&err, b""),
            vec![0xff, 0xff, 0xff, 0xff],
        ]
    },
};

fn round_trip<H>(data: &[u8])
where
    H: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    let Ok((head, payload)) = wire::decode::<H>(data) else {
        return;
    };
    assert!(
        data.ends_with(payload),
        "the payload is not the message's tail"
    );
    let again = wire::encode(&head, payload);
    let (back, back_payload) = wire::decode::<H>(&again).expect("a re-encoded message decodes");
    assert_eq!(back, head);
    assert_eq!(back_payload, payload);
}

fn check(data: &[u8]) {
    round_trip::<CallHead>(data);
    round_trip::<ReplyHead>(data);
}
