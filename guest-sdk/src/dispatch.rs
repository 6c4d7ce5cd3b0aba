//! Routing a request to one typed handler per operation.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::manifest::Operation;
use crate::{PluginError, Request, Response};

/// Routes a [`Request`] to the handler registered for its operation.
///
/// Build it with [`Request::dispatch`], register handlers with
/// [`Dispatch::json`] (typed JSON in and out) or [`Dispatch::raw`], and end with
/// [`Dispatch::finish`], which answers operations nobody registered with
/// [`PluginError::Unsupported`].
///
/// ```no_run
/// # use capsule_guest::{PluginError, Request, Response};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Deserialize)]
/// struct AddIn { a: i64, b: i64 }
///
/// fn handle(request: Request) -> Result<Response, PluginError> {
///     request
///         .dispatch()
///         .json("add", |input: AddIn| Ok(input.a + input.b))
///         .raw("echo", |request| Ok(Response::bytes(request.payload)))
///         .finish()
/// }
/// ```
pub struct Dispatch {
    state: State,
}

enum State {
    Pending(Request),
    Done(Result<Response, PluginError>),
    /// Building the manifest: handlers are recorded, never called.
    Probe,
}

impl Dispatch {
    pub(crate) fn new(request: Request) -> Self {
        let state = if crate::manifest::probing() {
            State::Probe
        } else {
            State::Pending(request)
        };
        Dispatch { state }
    }

    /// Records `operation` for the manifest when probing; whether it did.
    fn probe(
        &self,
        operation: &str,
        schemas: impl FnOnce() -> (Option<serde_json::Value>, Option<serde_json::Value>),
    ) -> bool {
        if !matches!(self.state, State::Probe) {
            return false;
        }
        let (input, output) = schemas();
        crate::manifest::record(Operation {
            name: operation.to_owned(),
            description: String::new(),
            input,
            output,
            pure: false,
        });
        true
    }

    /// Describes the operation registered just before, for the manifest
    /// (`capsule inspect`, `GET /v1/plugins`). Has no effect on calls.
    ///
    /// ```
    /// # use capsule_guest::{PluginError, Request, Response};
    /// fn handle(request: Request) -> Result<Response, PluginError> {
    ///     request
    ///         .dispatch()
    ///         .raw("ping", |_| Ok(Response::bytes("pong")))
    ///         .about("Answers pong")
    ///         .finish()
    /// }
    /// assert_eq!(handle(Request::new("ping", ""))?.payload, b"pong");
    /// # Ok::<(), PluginError>(())
    /// ```
    pub fn about(self, description: &str) -> Self {
        if matches!(self.state, State::Probe) {
            crate::manifest::describe_last(description);
        }
        self
    }

    /// Declares the operation registered just before pure: its answer
    /// depends on the operation and payload alone (and on the plugin's
    /// version and configuration), never on time, randomness or stored
    /// state. The host may then answer a repeated request from its response
    /// cache without running the plugin, and runs the operation with
    /// key-value writes and publishing denied. Has no effect on calls here.
    ///
    /// ```
    /// # use capsule_guest::{PluginError, Request, Response};
    /// fn handle(request: Request) -> Result<Response, PluginError> {
    ///     request
    ///         .dispatch()
    ///         .json("double", |n: i64| Ok(n * 2))
    ///         .pure()
    ///         .finish()
    /// }
    /// assert_eq!(handle(Request::new("double", "21"))?.payload, b"42");
    /// # Ok::<(), PluginError>(())
    /// ```
    pub fn pure(self) -> Self {
        if matches!(self.state, State::Probe) {
            crate::manifest::mark_last_pure();
        }
        self
    }

    /// Like [`Dispatch::json`], and the manifest carries JSON Schemas of
    /// `In` and `Out` (derive [`schemars::JsonSchema`] on them), so the host
    /// can show the operation's contract and, with `validate_input = true`
    /// in the policy, refuse a request that does not match it before the
    /// plugin runs.
    ///
    /// ```
    /// # use capsule_guest::{PluginError, Request, Response};
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct AddIn { a: i64, b: i64 }
    ///
    /// fn handle(request: Request) -> Result<Response, PluginError> {
    ///     request
    ///         .dispatch()
    ///         .typed("add", |input: AddIn| Ok(input.a + input.b))
    ///         .finish()
    /// }
    /// assert_eq!(handle(Request::new("add", r#"{"a":2,"b":3}"#))?.payload, b"5");
    /// # Ok::<(), PluginError>(())
    /// ```
    #[cfg(feature = "schema")]
    pub fn typed<In, Out>(
        self,
        operation: &str,
        handler: impl FnOnce(In) -> Result<Out, PluginError>,
    ) -> Self
    where
        In: DeserializeOwned + schemars::JsonSchema,
        Out: Serialize + schemars::JsonSchema,
    {
        if self.probe(operation, || {
            (
                Some(crate::manifest::schema_of::<In>()),
                Some(crate::manifest::schema_of::<Out>()),
            )
        }) {
            return self;
        }
        self.json(operation, handler)
    }

    /// Handles `operation` with a function from a JSON-decoded input to a
    /// JSON-encoded output. A payload that does not decode as `In` is answered
    /// with [`PluginError::InvalidInput`] without calling `handler`.
    ///
    /// `handler` may be a closure or a plain function, so each operation can
    /// be an ordinary typed function:
    ///
    /// ```
    /// # use capsule_guest::{PluginError, Request, Response};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Deserialize)]
    /// struct GreetIn { name: String }
    ///
    /// #[derive(Serialize)]
    /// struct GreetOut { greeting: String }
    ///
    /// fn greet(input: GreetIn) -> Result<GreetOut, PluginError> {
    ///     Ok(GreetOut { greeting: format!("Hello, {}!", input.name) })
    /// }
    ///
    /// fn handle(request: Request) -> Result<Response, PluginError> {
    ///     request.dispatch().json("greet", greet).finish()
    /// }
    ///
    /// let response = handle(Request::new("greet", r#"{"name":"Ada"}"#))?;
    /// assert_eq!(response.payload, br#"{"greeting":"Hello, Ada!"}"#);
    /// assert!(matches!(
    ///     handle(Request::new("greet", "{}")),
    ///     Err(PluginError::InvalidInput(_))
    /// ));
    /// # Ok::<(), PluginError>(())
    /// ```
    pub fn json<In, Out>(
        self,
        operation: &str,
        handler: impl FnOnce(In) -> Result<Out, PluginError>,
    ) -> Self
    where
        In: DeserializeOwned,
        Out: Serialize,
    {
        self.raw(operation, |request| {
            let input = request.json::<In>()?;
            Response::json(&handler(input)?)
        })
    }

    /// Handles `operation` with a function over the whole request: for
    /// payloads that are not JSON, or to read metadata.
    ///
    /// ```
    /// # use capsule_guest::{PluginError, Request, Response};
    /// fn handle(request: Request) -> Result<Response, PluginError> {
    ///     request
    ///         .dispatch()
    ///         .raw("shout", |request| {
    ///             Ok(Response::bytes(request.text()?.to_uppercase()))
    ///         })
    ///         .finish()
    /// }
    ///
    /// assert_eq!(handle(Request::new("shout", "hi"))?.payload, b"HI");
    /// # Ok::<(), PluginError>(())
    /// ```
    pub fn raw(
        self,
        operation: &str,
        handler: impl FnOnce(Request) -> Result<Response, PluginError>,
    ) -> Self {
        if self.probe(operation, || (None, None)) {
            return self;
        }
        match self.state {
            State::Pending(request) if request.operation == operation => Dispatch {
                state: State::Done(handler(request)),
            },
            state => Dispatch { state },
        }
    }

    /// The response of the handler that matched, or
    /// [`PluginError::Unsupported`] naming the operation if none did.
    ///
    /// ```
    /// # use capsule_guest::{PluginError, Request};
    /// let answer = Request::new("nope", "").dispatch().finish();
    /// assert_eq!(answer, Err(PluginError::unsupported_operation("nope")));
    /// ```
    pub fn finish(self) -> Result<Response, PluginError> {
        match self.state {
            State::Done(result) => result,
            State::Pending(request) => Err(PluginError::unsupported_operation(&request.operation)),
            State::Probe => Err(PluginError::Unsupported(
                "probed for the manifest, not called".into(),
            )),
        }
    }
}
