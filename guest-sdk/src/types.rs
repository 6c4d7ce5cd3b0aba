//! Conveniences on the generated contract types: JSON payloads, error
//! constructors and conversions so `?` works inside `handle`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Dispatch, Event, PluginError, Request, Response, ServiceError};

impl Request {
    /// A request for `operation` with a raw payload and no metadata; handy in
    /// a plugin's own unit tests.
    ///
    /// ```
    /// let request = capsule_guest::Request::new("greet", r#"{"name":"Ada"}"#);
    /// assert_eq!(request.operation, "greet");
    /// ```
    pub fn new(operation: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Request {
            operation: operation.into(),
            payload: payload.into(),
            metadata: Vec::new(),
        }
    }

    /// Parses the payload as JSON into `T`.
    ///
    /// A payload that is not valid JSON for `T` becomes
    /// [`PluginError::InvalidInput`] naming the operation and the parse error.
    ///
    /// ```
    /// # use capsule_guest::{PluginError, Request};
    /// #[derive(serde::Deserialize)]
    /// struct GreetIn { name: String }
    ///
    /// let input: GreetIn = Request::new("greet", r#"{"name":"Ada"}"#).json()?;
    /// assert_eq!(input.name, "Ada");
    ///
    /// let bad = Request::new("greet", "not json").json::<GreetIn>();
    /// assert!(matches!(bad, Err(PluginError::InvalidInput(_))));
    /// # Ok::<(), PluginError>(())
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(&self.payload).map_err(|err| {
            PluginError::InvalidInput(format!(
                "operation `{}`: payload is not the expected JSON: {err}",
                self.operation
            ))
        })
    }

    /// The payload as UTF-8 text, or [`PluginError::InvalidInput`].
    ///
    /// ```
    /// let request = capsule_guest::Request::new("shout", "hello");
    /// assert_eq!(request.text()?.to_uppercase(), "HELLO");
    /// # Ok::<(), capsule_guest::PluginError>(())
    /// ```
    pub fn text(&self) -> Result<&str, PluginError> {
        std::str::from_utf8(&self.payload).map_err(|err| {
            PluginError::InvalidInput(format!(
                "operation `{}`: payload is not UTF-8: {err}",
                self.operation
            ))
        })
    }

    /// The first metadata value stored under `key`.
    ///
    /// ```
    /// let mut request = capsule_guest::Request::new("greet", "{}");
    /// request.metadata.push(("trace-id".into(), "abc".into()));
    /// assert_eq!(request.metadata("trace-id"), Some("abc"));
    /// assert_eq!(request.metadata("missing"), None);
    /// ```
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Routes this request by operation; see [`Dispatch`].
    ///
    /// ```
    /// # use capsule_guest::{PluginError, Request, Response};
    /// fn handle(request: Request) -> Result<Response, PluginError> {
    ///     request
    ///         .dispatch()
    ///         .json("double", |n: i64| Ok(n * 2))
    ///         .finish()
    /// }
    ///
    /// let response = handle(Request::new("double", "21"))?;
    /// assert_eq!(response.payload, b"42");
    /// # Ok::<(), PluginError>(())
    /// ```
    pub fn dispatch(self) -> Dispatch {
        Dispatch::new(self)
    }
}

impl Response {
    /// A response carrying `payload` as is.
    ///
    /// ```
    /// let response = capsule_guest::Response::bytes("plain text");
    /// assert_eq!(response.payload, b"plain text");
    /// ```
    pub fn bytes(payload: impl Into<Vec<u8>>) -> Self {
        Response {
            payload: payload.into(),
            metadata: Vec::new(),
        }
    }

    /// A response whose payload is `value` serialised as JSON.
    ///
    /// ```
    /// let response = capsule_guest::Response::json(&serde_json::json!({"ok": true}))?;
    /// assert_eq!(response.payload, br#"{"ok":true}"#);
    /// # Ok::<(), capsule_guest::PluginError>(())
    /// ```
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, PluginError> {
        serde_json::to_vec(value)
            .map(Response::bytes)
            .map_err(|err| PluginError::Failed(format!("could not serialise the response: {err}")))
    }

    /// Adds one metadata entry.
    ///
    /// ```
    /// let response = capsule_guest::Response::bytes("done").with_metadata("cache", "hit");
    /// assert_eq!(response.metadata, [("cache".to_owned(), "hit".to_owned())]);
    /// ```
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }
}

impl Event {
    /// Parses the event's payload as JSON into `T`, or
    /// [`PluginError::InvalidInput`] naming the topic and the parse error.
    ///
    /// ```
    /// # use capsule_guest::{Event, PluginError};
    /// #[derive(serde::Deserialize)]
    /// struct Created { id: u64 }
    ///
    /// let event = Event {
    ///     topic: "orders.created".into(),
    ///     payload: br#"{"id":7}"#.to_vec(),
    ///     metadata: Vec::new(),
    /// };
    /// assert_eq!(event.json::<Created>()?.id, 7);
    /// # Ok::<(), PluginError>(())
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(&self.payload).map_err(|err| {
            PluginError::InvalidInput(format!(
                "event on `{}`: payload is not the expected JSON: {err}",
                self.topic
            ))
        })
    }

    /// The event's payload as UTF-8 text, or [`PluginError::InvalidInput`].
    ///
    /// ```
    /// # use capsule_guest::Event;
    /// let event = Event { topic: "chat.line".into(), payload: b"hi".to_vec(), metadata: Vec::new() };
    /// assert_eq!(event.text()?, "hi");
    /// # Ok::<(), capsule_guest::PluginError>(())
    /// ```
    pub fn text(&self) -> Result<&str, PluginError> {
        std::str::from_utf8(&self.payload).map_err(|err| {
            PluginError::InvalidInput(format!(
                "event on `{}`: payload is not UTF-8: {err}",
                self.topic
            ))
        })
    }
}

impl PluginError {
    /// The error for an operation this plugin does not implement;
    /// [`Dispatch::finish`] answers unknown operations with it.
    ///
    /// ```
    /// # use capsule_guest::PluginError;
    /// let err = PluginError::unsupported_operation("nope");
    /// assert_eq!(err, PluginError::Unsupported("unknown operation `nope`".into()));
    /// ```
    pub fn unsupported_operation(operation: &str) -> Self {
        PluginError::Unsupported(format!("unknown operation `{operation}`"))
    }

    /// Shorthand for [`PluginError::InvalidInput`]: the caller sent
    /// something the plugin cannot use.
    ///
    /// ```
    /// # use capsule_guest::PluginError;
    /// fn check(age: u32) -> Result<u32, PluginError> {
    ///     if age > 150 {
    ///         return Err(PluginError::invalid_input(format_args!("age {age} is not plausible")));
    ///     }
    ///     Ok(age)
    /// }
    /// assert!(check(200).is_err());
    /// ```
    pub fn invalid_input(message: impl std::fmt::Display) -> Self {
        PluginError::InvalidInput(message.to_string())
    }

    /// Shorthand for [`PluginError::Failed`]: anything else went wrong.
    ///
    /// ```
    /// # use capsule_guest::PluginError;
    /// let parsed: Result<u16, PluginError> = "70000".parse().map_err(PluginError::failed);
    /// assert!(matches!(parsed, Err(PluginError::Failed(_))));
    /// ```
    pub fn failed(message: impl std::fmt::Display) -> Self {
        PluginError::Failed(message.to_string())
    }
}

/// A denied host service stays a denial for the caller; every other service
/// failure is the plugin's failure. This is what makes `?` work on host
/// services inside `handle`.
///
/// ```
/// # use capsule_guest::{PluginError, ServiceError};
/// let denied: PluginError = ServiceError::Denied("kv not granted".into()).into();
/// assert_eq!(denied, PluginError::Denied("kv not granted".into()));
/// let quota: PluginError = ServiceError::QuotaExceeded("64 keys".into()).into();
/// assert!(matches!(quota, PluginError::Failed(_)));
/// ```
impl From<ServiceError> for PluginError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Denied(msg) => PluginError::Denied(msg),
            ServiceError::QuotaExceeded(msg) => {
                PluginError::Failed(format!("quota exceeded: {msg}"))
            }
            ServiceError::Invalid(msg) => {
                PluginError::Failed(format!("invalid service request: {msg}"))
            }
            ServiceError::Unavailable(msg) => {
                PluginError::Failed(format!("service unavailable: {msg}"))
            }
        }
    }
}
