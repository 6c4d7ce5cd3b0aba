//! `capsule new`: scaffold a plugin crate that builds on its own, outside this
//! repository, with `cargo build` (wasm32-wasip2) or `cargo component build`,
//! from one of a few templates, each with native tests against the SDK's
//! `MockHost` and a policy (`capsule.toml`) granting what it needs; or, with
//! `--lang python|js`, a plugin in that language with the helper module, the
//! contract and the pinned toolchain it builds with (`polyglot.rs`).

mod polyglot;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use capsule_host::artifact::inspect::version_compatible;
use capsule_host::{CONTRACT_PACKAGE, CONTRACT_VERSION};
use clap::{Args, ValueEnum};

use crate::exit;

// `SDK_FILES` and `SDK_MANIFEST`: the guest SDK of this binary's own
// version, embedded by `build.rs`.
include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// Where a scaffold vendors the embedded SDK, relative to its folder.
const VENDOR_DIR: &str = "vendor/capsule-guest";

/// Arguments of `capsule new`.
#[derive(Args)]
pub struct NewArgs {
    /// The plugin's crate name: ASCII letters, digits, `-` and `_`, starting
    /// with a letter, e.g. `demo-plugin`.
    name: String,
    /// The directory to create the plugin in; the crate goes to DIR/NAME,
    /// which must not exist yet.
    #[arg(long, value_name = "DIR", default_value = ".")]
    path: PathBuf,
    /// Depend on a local `capsule-guest` crate (a checkout's `guest-sdk`
    /// folder) by path instead of vendoring the SDK this `capsule` carries.
    #[arg(long, value_name = "PATH")]
    sdk: Option<PathBuf>,
    /// What the plugin starts as (the Python and JavaScript scaffolds are
    /// `handler`s).
    #[arg(long, value_enum, default_value_t = Template::Handler)]
    template: Template,
    /// The language the plugin is written in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
}

/// The languages `capsule new` scaffolds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// A crate with the Rust guest SDK.
    Rust,
    /// `app.py` with the helper `capsule.py`, built by componentize-py.
    Python,
    /// `app.js` with the helper `capsule.js`, built by componentize-js.
    Js,
}

/// The starting points `capsule new` offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// Answers requests: `greet`, with a config value.
    Handler,
    /// Receives events from subscribed topics and counts them in kv.
    EventConsumer,
    /// One stage of a pipeline: a JSON object in, reshaped out.
    PipelineStage,
    /// Calls an HTTP API it was granted, at a configured base URL.
    HttpClient,
}

impl Template {
    /// The plugin's `src/lib.rs`, its `capsule.toml` and the README's
    /// commands to run it.
    fn files(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Template::Handler => (
                include_str!("templates/handler.rs"),
                include_str!("templates/handler.toml"),
                include_str!("templates/handler.md"),
            ),
            Template::EventConsumer => (
                include_str!("templates/event-consumer.rs"),
                include_str!("templates/event-consumer.toml"),
                include_str!("templates/event-consumer.md"),
            ),
            Template::PipelineStage => (
                include_str!("templates/pipeline-stage.rs"),
                include_str!("templates/pipeline-stage.toml"),
                include_str!("templates/pipeline-stage.md"),
            ),
            Template::HttpClient => (
                include_str!("templates/http-client.rs"),
                include_str!("templates/http-client.toml"),
                include_str!("templates/http-client.md"),
            ),
        }
    }
}

/// Runs `capsule new`.
pub fn new(args: NewArgs) -> ExitCode {
    if let Err(message) = validate_crate_name(&args.name) {
        return fail(exit::USAGE, "config", &message);
    }
    if args.lang != Lang::Rust {
        return polyglot::new(&args);
    }
    let sdk = match &args.sdk {
        None => Sdk::embedded(),
        Some(path) => locate_sdk(path),
    };
    let sdk = match sdk {
        Ok(sdk) => sdk,
        Err(message) => return fail(exit::USAGE, "config", &message),
    };
    if !version_compatible(&sdk.contract_version) {
        eprintln!(
            "warning: the SDK {} targets {CONTRACT_PACKAGE}@{}, but this capsule serves \
             {CONTRACT_PACKAGE}@{CONTRACT_VERSION}: it will refuse plugins built with it",
            sdk.describe, sdk.contract_version
        );
    }
    let dest = args.path.join(&args.name);
    let files = match render(&args.name, &sdk, args.template) {
        Ok(files) => files,
        Err(message) => return fail(exit::USAGE, "config", &message),
    };
    if let Err(code) = create_or_fail(&args.path, &dest, &files) {
        return code;
    }

    let crate_file = args.name.replace('-', "_");
    println!(
        "created plugin `{}` in {} (SDK {}, contract {CONTRACT_PACKAGE}@{})",
        args.name,
        dest.display(),
        sdk.describe,
        sdk.contract_version
    );
    println!();
    println!("next:");
    println!("  cd {}", dest.display());
    println!("  cargo build --release   # or `cargo component build --release`, see README.md");
    println!("  capsule keygen --out dev");
    println!(
        "  capsule sign target/wasm32-wasip2/release/{crate_file}.wasm --key dev.key --output {}.wasm",
        args.name
    );
    println!("  capsule check --config capsule.toml");
    println!("  cargo test --target <host triple>   # natively, against the SDK's MockHost");
    println!("then README.md shows how to run it.");
    exit::code(exit::OK)
}

fn fail(code: u8, kind: &str, message: &str) -> ExitCode {
    eprintln!("error [{kind}]: {message}");
    exit::code(code)
}

/// Refuses names cargo would refuse (or that would clash with the plugin's
/// own dependencies), and names the host would not accept for the plugin.
fn validate_crate_name(name: &str) -> Result<(), String> {
    const RULE: &str = "use 1-64 ASCII letters, digits, `-` and `_`, starting with a letter";
    let Some(first) = name.chars().next() else {
        return Err(format!("the plugin name is empty: {RULE}"));
    };
    if name.len() > 64 {
        return Err(format!("`{name}` is longer than 64 characters: {RULE}"));
    }
    if !first.is_ascii_alphabetic() {
        return Err(format!(
            "`{name}` is not a valid crate name: it must start with a letter ({RULE})"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
    {
        return Err(format!(
            "`{name}` is not a valid crate name: {bad:?} is not allowed ({RULE})"
        ));
    }
    let ident = name.replace('-', "_");
    if RUST_KEYWORDS.contains(&ident.as_str()) {
        return Err(format!(
            "`{name}` is a Rust keyword, which cannot name a crate; choose another name"
        ));
    }
    let lower = ident.to_ascii_lowercase();
    if ["std", "core", "alloc", "proc_macro", "test"].contains(&lower.as_str()) {
        return Err(format!(
            "`{name}` conflicts with a Rust built-in library; choose another name"
        ));
    }
    if ["capsule_guest", "serde"].contains(&lower.as_str()) {
        return Err(format!(
            "`{name}` is the name of one of the plugin's dependencies; choose another name"
        ));
    }
    if ["deps", "examples", "build", "incremental"].contains(&lower.as_str()) {
        return Err(format!(
            "`{name}` is reserved by cargo for its build folders; choose another name"
        ));
    }
    let windows_reserved = matches!(lower.as_str(), "con" | "prn" | "aux" | "nul")
        || ((lower.starts_with("com") || lower.starts_with("lpt"))
            && lower.len() == 4
            && lower.as_bytes()[3].is_ascii_digit());
    if windows_reserved {
        return Err(format!(
            "`{name}` is a reserved file name on Windows; choose another name"
        ));
    }
    Ok(())
}

/// Rust's strict and reserved keywords (as cargo refuses them).
const RUST_KEYWORDS: &[&str] = &[
    "Self", "abstract", "as", "async", "await", "become", "box", "break", "const", "continue",
    "crate", "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if",
    "impl", "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub",
    "ref", "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// The guest SDK a scaffold depends on.
struct Sdk {
    /// How the scaffold's manifest names it: a path, relative to the
    /// scaffold (vendored) or absolute (a checkout).
    dependency: String,
    /// The WIT folder `cargo component build` reads the world from.
    wit: String,
    /// Files to write into the scaffold (the vendored SDK and its contract).
    vendored: Vec<(String, String)>,
    /// The `capsule:plugin` version its WIT declares.
    contract_version: String,
    /// What to call it in messages and in the scaffold's README.
    describe: String,
}

impl Sdk {
    /// The SDK this binary carries, vendored into the scaffold: it builds
    /// anywhere, with nothing but crates.io.
    fn embedded() -> Result<Sdk, String> {
        let wit = SDK_FILES
            .iter()
            .find(|(path, _)| *path == "wit/plugin.wit")
            .map(|(_, text)| *text)
            .ok_or("this capsule carries no SDK contract (wit/plugin.wit)")?;
        let mut vendored = vec![(format!("{VENDOR_DIR}/Cargo.toml"), SDK_MANIFEST.to_owned())];
        vendored.extend(
            SDK_FILES
                .iter()
                .map(|(path, text)| (format!("{VENDOR_DIR}/{path}"), (*text).to_owned())),
        );
        // The contract at the project's top, where `cargo component build`
        // reads it; it stays when the project moves to a published SDK.
        vendored.push(("wit/plugin.wit".to_owned(), wit.to_owned()));
        Ok(Sdk {
            dependency: VENDOR_DIR.to_owned(),
            wit: "wit".to_owned(),
            vendored,
            contract_version: contract_version(wit, "wit/plugin.wit")?,
            describe: format!("capsule-guest {} (vendored)", env!("CARGO_PKG_VERSION")),
        })
    }
}

/// The version in `package capsule:plugin@VERSION;` of a WIT file.
fn contract_version(wit: &str, file: &str) -> Result<String, String> {
    let prefix = format!("package {CONTRACT_PACKAGE}@");
    wit.lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))
        .map(|rest| rest.trim_end_matches(';').trim().to_owned())
        .ok_or_else(|| format!("{file} does not declare `package {CONTRACT_PACKAGE}@VERSION;`"))
}

/// Checks that `path` is the `capsule-guest` crate with its WIT, and makes
/// it absolute so the scaffold builds from anywhere on this machine.
fn locate_sdk(path: &Path) -> Result<Sdk, String> {
    let hint = "pass --sdk PATH pointing at the `guest-sdk` folder of a Capsule checkout, \
                or leave --sdk out to vendor the SDK this capsule carries";
    let dir = std::fs::canonicalize(path).map_err(|err| {
        format!(
            "the guest SDK {} is not there ({err}); {hint}",
            path.display()
        )
    })?;
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|err| format!("cannot read {} ({err}); {hint}", manifest.display()))?;
    let is_sdk = text
        .lines()
        .any(|line| line.replace(' ', "") == "name=\"capsule-guest\"");
    if !is_sdk {
        return Err(format!(
            "{} is not the `capsule-guest` crate; {hint}",
            manifest.display()
        ));
    }
    let wit = dir.join("wit");
    let wit_file = wit.join("plugin.wit");
    let contract = std::fs::read_to_string(&wit_file).map_err(|err| {
        format!(
            "cannot read the SDK's contract {} ({err})",
            wit_file.display()
        )
    })?;
    let contract_version = contract_version(&contract, &wit_file.display().to_string())?;
    let utf8 = |what: &str, path: &Path| {
        path.to_str().map(str::to_owned).ok_or_else(|| {
            format!(
                "the {what} path {} is not UTF-8, which Cargo.toml cannot hold",
                path.display()
            )
        })
    };
    Ok(Sdk {
        dependency: utf8("SDK", &dir)?,
        wit: utf8("WIT", &wit)?,
        vendored: Vec::new(),
        contract_version,
        describe: format!("at {}", dir.display()),
    })
}

/// [`create`], with its failure reported as the command's exit.
fn create_or_fail(parent: &Path, dest: &Path, files: &[(String, String)]) -> Result<(), ExitCode> {
    match create(parent, dest, files) {
        Ok(()) => Ok(()),
        Err(CreateError::Exists) => Err(fail(
            exit::USAGE,
            "config",
            &format!(
                "{} already exists; `capsule new` never overwrites anything \
                 (choose another NAME or --path)",
                dest.display()
            ),
        )),
        Err(CreateError::Io(message)) => Err(fail(exit::HOST, "io", &message)),
    }
}

/// Why the crate could not be created.
enum CreateError {
    /// The destination exists; nothing was touched.
    Exists,
    /// Creating or writing failed; whatever was created is removed again.
    Io(String),
}

/// Creates `dest` (which must not exist) and writes `files` into it. On a
/// failure after creating `dest`, removes it again.
fn create(parent: &Path, dest: &Path, files: &[(String, String)]) -> Result<(), CreateError> {
    if dest.symlink_metadata().is_ok() {
        return Err(CreateError::Exists);
    }
    std::fs::create_dir_all(parent)
        .map_err(|err| CreateError::Io(format!("cannot create {}: {err}", parent.display())))?;
    // `create_dir` (not `_all`) fails if something appeared meanwhile, so an
    // existing directory is never written into.
    match std::fs::create_dir(dest) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(CreateError::Exists);
        }
        Err(err) => {
            return Err(CreateError::Io(format!(
                "cannot create {}: {err}",
                dest.display()
            )));
        }
    }
    let written = files.iter().try_for_each(|(relative, contents)| {
        let path = dest.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        }
        std::fs::write(&path, contents)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))
    });
    written.map_err(|message| {
        let _ = std::fs::remove_dir_all(dest);
        CreateError::Io(message)
    })
}

/// The scaffold's files, relative to its directory.
fn render(name: &str, sdk: &Sdk, template: Template) -> Result<Vec<(String, String)>, String> {
    let sdk_comment = if sdk.vendored.is_empty() {
        "# The Capsule guest SDK, by path: the checkout named with `capsule new --sdk`."
    } else {
        "# The Capsule guest SDK: `capsule new` vendored the SDK of its own version into\n\
         # vendor/capsule-guest, so this crate builds anywhere with only crates.io\n\
         # reachable. To use a published SDK instead, replace this line with\n\
         #   capsule-guest = \"0.1\"\n\
         # and delete vendor/ (the contract for cargo-component stays in wit/)."
    };
    let fill = |template: &str| {
        template
            .replace("__NAME__", name)
            .replace("__CRATE__", &name.replace('-', "_"))
            .replace("__TYPE__", &type_name(name))
            .replace("__SDK_COMMENT__", sdk_comment)
            .replace("__SDK_TOML__", &toml_string(&sdk.dependency))
            .replace("__WIT_TOML__", &toml_string(&sdk.wit))
            .replace("__SDK__", &sdk.describe)
            .replace("__CONTRACT__", &sdk.contract_version)
            .replace("__MEMORY__", "32MiB")
    };
    let (lib, policy, usage) = template.files();
    let mut files: Vec<(String, String)> = [
        ("Cargo.toml", CARGO_TOML),
        ("src/lib.rs", lib),
        ("capsule.toml", policy),
        (".cargo/config.toml", CARGO_CONFIG),
        (".gitignore", GITIGNORE),
        ("README.md", README),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_owned(), fill(&text.replace("__USAGE__", usage))))
    .collect();
    files.extend(sdk.vendored.iter().cloned());
    Ok(files)
}

/// The plugin type's name: the crate name in CamelCase, renamed if it would
/// clash with a name the template imports or defines.
fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect();
    const TAKEN: &[&str] = &[
        "Plugin",
        "PluginError",
        "Request",
        "Response",
        "GreetIn",
        "GreetOut",
    ];
    if TAKEN.contains(&camel.as_str()) {
        format!("{camel}Handler")
    } else {
        camel
    }
}

/// `text` as a TOML basic string, quotes included.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const CARGO_TOML: &str = include_str!("templates/Cargo.toml.tmpl");

const CARGO_CONFIG: &str = include_str!("templates/cargo-config.toml");

const GITIGNORE: &str = include_str!("templates/gitignore");

const README: &str = include_str!("templates/README.md");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_follow_cargo() {
        for good in ["demo-plugin", "x", "my_plugin2", "Greeter"] {
            assert!(validate_crate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "2fast",
            "-x",
            "_x",
            "has space",
            "dot.ted",
            "ünï",
            "fn",
            "self",
            "std",
            "test",
            "capsule-guest",
            "serde",
            "deps",
            "con",
            "com1",
            &"a".repeat(65),
        ] {
            assert!(validate_crate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn type_names_are_camel_case_and_never_clash() {
        assert_eq!(type_name("demo-plugin"), "DemoPlugin");
        assert_eq!(type_name("http2_proxy"), "Http2Proxy");
        assert_eq!(type_name("plugin"), "PluginHandler");
        assert_eq!(type_name("request"), "RequestHandler");
    }

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string(r#"C:\a "b""#), r#""C:\\a \"b\"""#);
    }

    /// The manifest `render` writes, parsed.
    fn manifest_of(files: &[(String, String)]) -> toml::Table {
        let text = &files
            .iter()
            .find(|(path, _)| path == "Cargo.toml")
            .unwrap()
            .1;
        text.parse().unwrap()
    }

    #[test]
    fn a_checkout_sdk_is_a_path_dependency_in_valid_toml() {
        let sdk = Sdk {
            dependency: "/opt/capsule \"x\"/guest-sdk".into(),
            wit: "/opt/capsule \"x\"/guest-sdk/wit".into(),
            vendored: Vec::new(),
            contract_version: "0.1.0".into(),
            describe: "at /opt".into(),
        };
        let files = render("demo-plugin", &sdk, Template::Handler).unwrap();
        let value = manifest_of(&files);
        assert_eq!(value["package"]["name"].as_str(), Some("demo-plugin"));
        assert_eq!(
            value["dependencies"]["capsule-guest"]["path"].as_str(),
            Some("/opt/capsule \"x\"/guest-sdk")
        );
        assert_eq!(
            value["package"]["metadata"]["component"]["target"]["path"].as_str(),
            Some("/opt/capsule \"x\"/guest-sdk/wit")
        );
        assert!(value["workspace"].as_table().unwrap().is_empty());
        assert!(!files.iter().any(|(path, _)| path.starts_with("vendor/")));
        let lib = &files
            .iter()
            .find(|(path, _)| path == "src/lib.rs")
            .unwrap()
            .1;
        assert!(lib.contains("export_plugin!(DemoPlugin);"), "{lib}");
        assert!(
            !files.iter().any(|(_, text)| text.contains("__NAME__")),
            "a placeholder is left"
        );
    }

    #[test]
    fn the_embedded_sdk_is_vendored_whole_with_a_standalone_manifest() {
        let sdk = Sdk::embedded().unwrap();
        assert_eq!(sdk.contract_version, CONTRACT_VERSION);
        let files = render("demo-plugin", &sdk, Template::Handler).unwrap();
        let value = manifest_of(&files);
        assert_eq!(
            value["dependencies"]["capsule-guest"]["path"].as_str(),
            Some("vendor/capsule-guest")
        );
        assert_eq!(
            value["package"]["metadata"]["component"]["target"]["path"].as_str(),
            Some("wit")
        );
        for file in [
            "vendor/capsule-guest/src/lib.rs",
            "vendor/capsule-guest/wit/plugin.wit",
            "wit/plugin.wit",
        ] {
            assert!(files.iter().any(|(path, _)| path == file), "{file}");
        }
        let vendored: toml::Table = files
            .iter()
            .find(|(path, _)| path == "vendor/capsule-guest/Cargo.toml")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(vendored["package"]["name"].as_str(), Some("capsule-guest"));
        assert_eq!(
            vendored["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(vendored.get("lints").is_none());
        let text = toml::to_string(&vendored).unwrap();
        assert!(!text.contains("workspace"), "{text}");
        assert!(vendored["dependencies"]["wit-bindgen"]["version"].is_str());
    }
}
