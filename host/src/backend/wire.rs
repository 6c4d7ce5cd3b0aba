//! The wire form of a call between the hosts of a deployment and of its
//! reply: a 4-byte big-endian length, a JSON head of that length
//! ([`CallHead`], [`ReplyHead`]), then the payload bytes as they are (no
//! encoding of the payload, no header escaping). Messages come from the
//! network, so [`decode`] refuses anything malformed with a reason and never
//! panics; `backend::calls` carries them over NATS.

use serde::{Deserialize, Serialize};

/// What travels ahead of a call's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallHead {
    /// The operation requested.
    pub operation: String,
    /// The request's metadata.
    pub metadata: Vec<(String, String)>,
    /// How long the caller still waits, in milliseconds: the serving host
    /// ends the call by then.
    pub wait_ms: u64,
    /// The calling host.
    pub from: String,
}

/// What travels ahead of a reply's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyHead {
    /// The host that ran the call.
    pub host: String,
    /// The call's result.
    pub result: ReplyResult,
}

/// How a call ended on the host that ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyResult {
    /// It succeeded; the payload is the response's.
    Ok {
        /// The response's metadata.
        metadata: Vec<(String, String)>,
        /// Fuel the call used, when fuel is metered.
        fuel_used: Option<u64>,
        /// Fuel the plugins it called used.
        callee_fuel: u64,
        /// Whether the call ran on a fresh instance.
        fresh_instance: bool,
        // Absent from hosts older than the per-call resource report.
        /// The plugin's fuel limit.
        #[serde(default)]
        fuel_limit: Option<u64>,
        /// The instance's memory after the call.
        #[serde(default)]
        memory_bytes: Option<u64>,
        /// The plugin's memory limit.
        #[serde(default)]
        memory_limit: u64,
        /// Whether the answer came from the response cache (absent from
        /// hosts older than the cache).
        #[serde(default)]
        cached: bool,
    },
    /// It failed: the error's stable kind and message, and for a plugin's
    /// own error its variant (`invalid_input`, `unsupported`, `denied`,
    /// `failed`) with the plugin's message alone.
    Err {
        /// The error's stable kind.
        kind: String,
        /// What went wrong.
        message: String,
        /// For the plugin's own error: its variant and message.
        plugin_error: Option<(String, String)>,
    },
}

/// Frames `head` and `payload` as one message body.
pub fn encode<H: Serialize>(head: &H, payload: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("a head always serializes");
    let mut body = Vec::with_capacity(4 + head.len() + payload.len());
    body.extend_from_slice(&(head.len() as u32).to_be_bytes());
    body.extend_from_slice(&head);
    body.extend_from_slice(payload);
    body
}

/// Splits a message body into its head and payload; a malformed body (from
/// something that is not a Capsule host) is an error, never a panic.
pub fn decode<H: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<(H, &[u8]), String> {
    let Some((length, rest)) = body.split_first_chunk::<4>() else {
        return Err(format!("a message of {} bytes has no head", body.len()));
    };
    let length = u32::from_be_bytes(*length) as usize;
    if length > rest.len() {
        return Err(format!(
            "a head of {length} bytes in a message of {} bytes",
            body.len()
        ));
    }
    let (head, payload) = rest.split_at(length);
    let head = serde_json::from_slice(head).map_err(|err| format!("a malformed head: {err}"))?;
    Ok((head, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_round_trips_through_its_wire_form() {
        let head = CallHead {
            operation: "greet".into(),
            metadata: vec![("request-id".into(), "a\r\nb".into())],
            wait_ms: 1500,
            from: "a-1".into(),
        };
        let payload = b"\x00\xffbinary\n";
        let body = encode(&head, payload);
        let (back, rest): (CallHead, &[u8]) = decode(&body).unwrap();
        assert_eq!(back, head);
        assert_eq!(rest, payload);
    }

    #[test]
    fn a_malformed_message_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"\x00\x00",
            b"\x00\x00\x00\x10{}",
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00\x02{]",
        ] {
            assert!(decode::<CallHead>(body).is_err(), "{body:?}");
        }
    }
}
