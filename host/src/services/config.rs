//! The `config` service: read-only values the operator set for one plugin,
//! typed, checked against the plugin's declared schema, with secrets.
//!
//! Always available: a plugin sees only its own values, and an operator who
//! set none simply gives it an empty map.
//!
//! - **Typed values**: a policy writes strings, numbers, booleans, arrays
//!   and tables (`config = { retries = 3, hosts = ["a", "b"] }`). `get`
//!   answers a string as it is and anything else as JSON text; contract
//!   0.2's `get-json` answers every value as one JSON object.
//! - **A schema**: a plugin may declare a JSON Schema of its configuration
//!   in its signed manifest. At load (and in `capsule check`) the values are
//!   coerced by it (`--set retries=3` is a string until the schema says
//!   `integer`), its defaults fill unset keys, and values that do not match
//!   refuse the load, naming the key ([`apply_schema`]).
//! - **Secrets**: `[plugins.NAME.secrets]` values are read from an
//!   environment variable or a file when the policy is read, reach the
//!   plugin like any value, and are never shown: [`Secret`] prints and
//!   serialises as `(secret)`, and schema errors about them mask the value.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use wasmtime::component::{HasData, Linker};

use super::{
    Availability, Holds, Import, PolicyContext, PrepareContext, Service, StoreContext, Views,
};
use crate::artifact::manifest::compile_schema;
use crate::bounds::Invalid;
use crate::contract::{ServiceError, interfaces, interfaces_v0_2};

pub use crate::secret::Secret;

/// What the operator configured for one plugin: typed values and secrets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConfigGrant {
    /// Values by key, as the policy (or `--set`, as strings) wrote them.
    pub values: BTreeMap<String, Value>,
    /// Secrets by key, read from the environment or files.
    pub secrets: BTreeMap<String, Secret>,
}

impl ConfigGrant {
    /// Sets a string value (what `capsule run --set` and
    /// `PluginSpec::config` do).
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.values.insert(key.into(), Value::String(value.into()));
    }

    /// Every key, values and secrets, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .values
            .keys()
            .chain(self.secrets.keys())
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// The configuration as one JSON object, secrets included (for the
    /// plugin and for checking against its schema only).
    fn document(&self) -> serde_json::Map<String, Value> {
        let mut document: serde_json::Map<String, Value> = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, secret) in &self.secrets {
            document.insert(key.clone(), Value::String(secret.expose().to_owned()));
        }
        document
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ConfigGrant {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> ConfigGrant {
        let mut grant = ConfigGrant::default();
        for (key, value) in pairs {
            grant.insert(key, value);
        }
        grant
    }
}

/// What `get` answers for a value: a string as it is, anything else as
/// JSON text.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// What the plugin reads, computed once per plugin version.
pub(crate) struct Effective {
    /// `get`'s answers, by key.
    text: BTreeMap<String, String>,
    /// `get-json`'s answer.
    json: String,
}

impl Effective {
    fn of(grant: &ConfigGrant) -> Effective {
        let document = grant.document();
        let text = document
            .iter()
            .map(|(k, v)| (k.clone(), as_text(v)))
            .collect();
        Effective {
            text,
            json: Value::Object(document).to_string(),
        }
    }
}

/// One value that does not match the plugin's config schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key it is about (empty when the problem is the whole object's).
    pub key: String,
    /// What is wrong (a secret's value is never part of it).
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "`config.{}`: {}", self.key, self.message)
        }
    }
}

/// Where a policy file wrote a plugin's configuration: to point at what
/// the plugin's config schema refuses, by file, line and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOrigin {
    /// The policy file.
    pub file: std::path::PathBuf,
    /// The plugin's name in it.
    pub plugin: String,
    /// Where each value and secret is written (line, column).
    pub at: BTreeMap<String, (usize, usize)>,
}

impl ConfigOrigin {
    /// One line per problem: `FILE:LINE:COLUMN: `plugins.NAME.config.KEY`:
    /// what is wrong` (without a line for a key the file does not write).
    pub fn report(&self, problems: &[ConfigProblem]) -> String {
        problems
            .iter()
            .map(|problem| {
                let key = if problem.key.is_empty() {
                    format!("plugins.{}.config", self.plugin)
                } else {
                    format!("plugins.{}.config.{}", self.plugin, problem.key)
                };
                match self.at.get(&problem.key) {
                    Some((line, column)) => format!(
                        "{}:{line}:{column}: `{key}`: {}",
                        self.file.display(),
                        problem.message
                    ),
                    None => format!("{}: `{key}`: {}", self.file.display(), problem.message),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Problems without a policy file to point into.
pub fn report(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The most problems one check reports.
const MAX_PROBLEMS: usize = 16;

/// The types a schema allows at `properties.KEY.type` (none: any).
fn declared_types(schema: &Value, key: &str) -> Vec<String> {
    match schema.pointer(&format!(
        "/properties/{}/type",
        key.replace('~', "~0").replace('/', "~1")
    )) {
        Some(Value::String(kind)) => vec![kind.clone()],
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A string value read as the type the schema declares for its key, when
/// the schema does not allow a string there and the text is that type's
/// JSON (`"3"` → `3` for an `integer`).
fn coerce(schema: &Value, key: &str, value: Value) -> Value {
    let Value::String(text) = &value else {
        return value;
    };
    let kinds = declared_types(schema, key);
    if kinds.is_empty() || kinds.iter().any(|k| k == "string") {
        return value;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(parsed) => {
            let fits = kinds.iter().any(|kind| match kind.as_str() {
                "integer" => parsed.is_i64() || parsed.is_u64(),
                "number" => parsed.is_number(),
                "boolean" => parsed.is_boolean(),
                "array" => parsed.is_array(),
                "object" => parsed.is_object(),
                "null" => parsed.is_null(),
                _ => false,
            });
            if fits { parsed } else { value }
        }
        Err(_) => value,
    }
}

/// The key a schema error is about: the missing or unexpected property, or
/// the first segment of where it was found.
fn problem_key(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind;
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            property.as_str().unwrap_or_default().to_owned()
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            unexpected.first().cloned().unwrap_or_default()
        }
        _ => {
            let path = error.instance_path().to_string();
            let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
            first.replace("~1", "/").replace("~0", "~")
        }
    }
}

/// Checks `grant` against the plugin's config `schema`: string values are
/// coerced to the type the schema declares for their key, the schema's
/// `default`s fill unset keys, and every value must then match. Returns the
/// configuration the plugin will see, or every problem (at most 16).
pub fn apply_schema(
    schema: &Value,
    grant: &ConfigGrant,
) -> Result<ConfigGrant, Vec<ConfigProblem>> {
    let validator = compile_schema(schema).map_err(|err| {
        vec![ConfigProblem {
            key: String::new(),
            message: format!("the plugin's config schema does not compile: {err}"),
        }]
    })?;
    let mut values: BTreeMap<String, Value> = grant
        .values
        .iter()
        .map(|(key, value)| (key.clone(), coerce(schema, key, value.clone())))
        .collect();
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (key, property) in properties {
            if let Some(default) = property.get("default")
                && !values.contains_key(key)
                && !grant.secrets.contains_key(key)
            {
                values.insert(key.clone(), default.clone());
            }
        }
    }
    let effective = ConfigGrant {
        values,
        secrets: grant.secrets.clone(),
    };
    let document = Value::Object(effective.document());
    let problems: Vec<ConfigProblem> = validator
        .iter_errors(&document)
        .take(MAX_PROBLEMS)
        .map(|error| {
            let key = problem_key(&error);
            let message = if grant.secrets.contains_key(&key) {
                format!("{} (a secret)", error.masked_with("the secret"))
            } else {
                error.to_string()
            };
            ConfigProblem { key, message }
        })
        .collect();
    if problems.is_empty() {
        Ok(effective)
    } else {
        Err(problems)
    }
}

/// Per-store state of the `config` service: the plugin's values, shared by
/// every instance of the plugin.
pub(crate) struct ConfigState {
    pub(crate) values: Arc<Effective>,
}

impl interfaces_v0_2::config::Host for ConfigState {
    fn get(&mut self, key: String) -> Result<Option<String>, ServiceError> {
        interfaces::config::Host::get(self, key)
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, ServiceError> {
        interfaces::config::Host::get_all(self)
    }

    fn get_json(&mut self) -> Result<String, ServiceError> {
        Ok(self.values.json.clone())
    }
}

/// `wasi:config@0.2.0-draft` (`store`): the same values as
/// `capsule:plugin/config`, for components written against the standard
/// interface. A key the operator did not set is `none`, as there.
impl crate::contract::standard_interfaces::config::store::Host for ConfigState {
    fn get(
        &mut self,
        key: String,
    ) -> Result<Option<String>, crate::contract::standard_interfaces::config::store::Error> {
        Ok(self.values.text.get(&key).cloned())
    }

    fn get_all(
        &mut self,
    ) -> Result<Vec<(String, String)>, crate::contract::standard_interfaces::config::store::Error>
    {
        Ok(interfaces::config::Host::get_all(self).unwrap_or_default())
    }
}

impl interfaces::config::Host for ConfigState {
    fn get(&mut self, key: String) -> Result<Option<String>, ServiceError> {
        Ok(self.values.text.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, ServiceError> {
        Ok(self
            .values
            .text
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// The `config` service.
pub(crate) struct Config;

struct ConfigData;

impl HasData for ConfigData {
    type Data<'a> = &'a mut ConfigState;
}

/// The longest configuration, values and secrets, as JSON: what one
/// `get-json` hands the plugin and every instance shares.
const MAX_CONFIG_BYTES: usize = 1 << 20;

impl Service for Config {
    const NAME: &'static str = "config";
    const IMPORTS: &'static [Import] = &[
        Import::contract("config"),
        Import::interface("wasi:config", "store"),
    ];
    const BUDGETS: &'static str = "the operator's values and secrets, at most 1 MiB as JSON, \
        shared by every instance";

    type Grant = ConfigGrant;
    /// Keys keep where they are written, so that schema errors found at
    /// load can name the line.
    type Policy = BTreeMap<toml::Spanned<String>, Value>;
    /// The keys, never the values: a value may be a credential.
    type Summary = Vec<String>;
    type Prepared = Arc<Effective>;
    type State = ConfigState;

    fn from_policy(
        values: BTreeMap<toml::Spanned<String>, Value>,
        _context: &PolicyContext<'_>,
    ) -> Result<Self::Grant, Invalid> {
        Ok(ConfigGrant {
            values: values
                .into_iter()
                .map(|(key, value)| (key.into_inner(), value))
                .collect(),
            secrets: BTreeMap::new(),
        })
    }

    fn validate(grant: &Self::Grant) -> Result<(), Invalid> {
        for key in grant.values.keys().chain(grant.secrets.keys()) {
            if key.is_empty() || key.contains('\0') {
                return Err(Invalid::new(
                    key.clone(),
                    "a configuration key must be non-empty, without NUL",
                ));
            }
        }
        if let Some(key) = grant
            .secrets
            .keys()
            .find(|key| grant.values.contains_key(*key))
        {
            return Err(Invalid::new(
                key.clone(),
                "set both as a value and as a secret: keep one",
            ));
        }
        let size = Value::Object(grant.document()).to_string().len();
        if size > MAX_CONFIG_BYTES {
            return Err(Invalid::new(
                "",
                format!("{size} bytes as JSON, over the limit of {MAX_CONFIG_BYTES}"),
            ));
        }
        Ok(())
    }

    fn availability(_grant: &Self::Grant) -> Availability {
        Availability::Always
    }

    fn summary(grant: &Self::Grant) -> Vec<String> {
        grant.keys()
    }

    fn prepare(
        grant: &Self::Grant,
        _context: &PrepareContext<'_>,
    ) -> Result<Self::Prepared, String> {
        Ok(Arc::new(Effective::of(grant)))
    }

    fn new_state(
        values: &Self::Prepared,
        _store: &mut StoreContext<'_>,
    ) -> Result<ConfigState, String> {
        Ok(ConfigState {
            values: Arc::clone(values),
        })
    }

    fn add_to_linker<T: Holds<Self> + Views>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        interfaces::config::add_to_linker::<T, ConfigData>(linker, |store| store.state())?;
        interfaces_v0_2::config::add_to_linker::<T, ConfigData>(linker, |store| store.state())?;
        crate::contract::standard_interfaces::config::store::add_to_linker::<T, ConfigData>(
            linker,
            |store| store.state(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::contract::interfaces::config::Host as _;
    use crate::services::harness::Harness;

    #[test]
    fn a_plugin_reads_only_the_values_it_was_given() {
        let mut config = Harness::<Config>::from_policy(
            r#"{ greeting = "hi", token = "s3cret" }"#,
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            config.state.get("greeting".into()).unwrap().as_deref(),
            Some("hi")
        );
        assert_eq!(config.state.get("HOME".into()).unwrap(), None);
        assert_eq!(config.state.get_all().unwrap().len(), 2);
        let mut nothing = Harness::<Config>::not_granted();
        assert!(nothing.state.get_all().unwrap().is_empty());
    }

    #[test]
    fn keys_are_checked_and_values_never_shown() {
        let err = Harness::<Config>::from_policy(r#"{ "" = "x" }"#, Path::new("."))
            .err()
            .unwrap();
        assert_eq!(err.field, "");
        let values: ConfigGrant = [("token", "s3cret")].into_iter().collect();
        assert_eq!(Config::summary(&values), ["token"]);
    }

    fn schema() -> Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
                "endpoint": {"type": "string"},
                "verbose": {"type": "boolean"},
                "token": {"type": "string", "minLength": 8}
            },
            "required": ["endpoint"],
            "additionalProperties": false
        })
    }

    #[test]
    fn a_schema_coerces_fills_defaults_and_names_each_bad_key() {
        let mut grant: ConfigGrant = [("endpoint", "https://x"), ("verbose", "true")]
            .into_iter()
            .collect();
        let applied = apply_schema(&schema(), &grant).unwrap();
        assert_eq!(applied.values["verbose"], Value::Bool(true), "coerced");
        assert_eq!(applied.values["retries"], Value::from(3), "defaulted");
        assert_eq!(
            Effective::of(&applied).json,
            r#"{"endpoint":"https://x","retries":3,"verbose":true}"#
        );
        grant.values.insert("retries".into(), Value::from(11));
        grant.insert("colour", "red");
        grant.values.remove("endpoint");
        let problems = apply_schema(&schema(), &grant).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"retries"), "{problems:?}");
        assert!(keys.contains(&"colour"), "{problems:?}");
        assert!(keys.contains(&"endpoint"), "{problems:?}");
        // A string that is not the declared type's JSON stays a string, and
        // is refused as one.
        let grant: ConfigGrant = [("endpoint", "e"), ("retries", "lots")]
            .into_iter()
            .collect();
        let problems = apply_schema(&schema(), &grant).unwrap_err();
        assert_eq!(problems[0].key, "retries");
        assert!(problems[0].message.contains("lots"), "{problems:?}");
    }

    #[test]
    fn a_secret_reaches_the_plugin_but_never_an_error_or_a_listing() {
        let mut grant: ConfigGrant = [("endpoint", "e")].into_iter().collect();
        grant.secrets.insert("token".into(), Secret::new("zq7x"));
        let problems = apply_schema(&schema(), &grant).unwrap_err();
        assert_eq!(problems[0].key, "token");
        assert!(!problems[0].message.contains("zq7x"), "{problems:?}");
        let origin = ConfigOrigin {
            file: "capsule.toml".into(),
            plugin: "p".into(),
            at: BTreeMap::from([("token".to_owned(), (7, 1))]),
        };
        let report = origin.report(&problems);
        assert!(
            report.starts_with("capsule.toml:7:1: `plugins.p.config.token`:"),
            "{report}"
        );
        assert!(!report.contains("zq7x"));
        grant
            .secrets
            .insert("token".into(), Secret::new("long enough"));
        let applied = apply_schema(&schema(), &grant).unwrap();
        let effective = Effective::of(&applied);
        assert_eq!(effective.text["token"], "long enough");
        for shown in [
            format!("{applied:?}"),
            serde_json::to_string(&applied).unwrap(),
            format!("{:?}", Config::summary(&applied)),
        ] {
            assert!(!shown.contains("long enough"), "{shown}");
        }
    }

    #[test]
    fn values_of_any_type_are_json_text_to_get_and_typed_to_get_json() {
        let mut config = Harness::<Config>::from_policy(
            r#"{ name = "ada", retries = 3, hosts = ["a", "b"], tls = { verify = true } }"#,
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            config.state.get("name".into()).unwrap().as_deref(),
            Some("ada")
        );
        assert_eq!(
            config.state.get("retries".into()).unwrap().as_deref(),
            Some("3")
        );
        assert_eq!(
            config.state.get("hosts".into()).unwrap().as_deref(),
            Some(r#"["a","b"]"#)
        );
        let json =
            crate::contract::interfaces_v0_2::config::Host::get_json(&mut config.state).unwrap();
        assert_eq!(
            json,
            r#"{"hosts":["a","b"],"name":"ada","retries":3,"tls":{"verify":true}}"#
        );
    }
}
