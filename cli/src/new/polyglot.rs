//! `capsule new NAME --lang python|js`: a plugin in another language, as a
//! folder that builds on its own: the plugin (`app.py` / `app.js`, a
//! `greet` handler), the helper module this binary carries
//! (`guest-sdk/python/capsule.py`, `guest-sdk/js/capsule.js`), the contract
//! (`wit/plugin.wit`), the toolchain pinned exactly as this repository's
//! examples pin it (`requirements.txt`; `package.json` with its lock file),
//! a policy and a README.

use std::process::ExitCode;

use super::{Lang, NewArgs, Sdk, Template, create_or_fail, fail};
use crate::exit;

/// The Python helper, as the examples use it.
const PYTHON_HELPER: &str = include_str!("../../../guest-sdk/python/capsule.py");
/// componentize-py, pinned as the examples pin it.
const PYTHON_REQUIREMENTS: &str = include_str!("../../../example-plugins/python/requirements.txt");
/// The JavaScript helper, as the examples use it.
const JS_HELPER: &str = include_str!("../../../guest-sdk/js/capsule.js");
/// componentize-js and what it needs, pinned as the examples pin them.
const JS_PACKAGE: &str = include_str!("../../../example-plugins/js/package.json");
/// The lock file that pins everything below them, for `npm ci`.
const JS_LOCK: &str = include_str!("../../../example-plugins/js/package-lock.json");

/// Runs `capsule new` for a language other than Rust.
pub(super) fn new(args: &NewArgs) -> ExitCode {
    if args.template != Template::Handler {
        return fail(
            exit::USAGE,
            "config",
            "only the `handler` template exists for Python and JavaScript plugins; \
             leave --template out",
        );
    }
    if args.sdk.is_some() {
        return fail(
            exit::USAGE,
            "config",
            "--sdk names a Rust guest SDK; a Python or JavaScript plugin carries its helper \
             module instead",
        );
    }
    let sdk = match Sdk::embedded() {
        Ok(sdk) => sdk,
        Err(message) => return fail(exit::USAGE, "config", &message),
    };
    let files = match render(&args.name, &sdk, args.lang) {
        Ok(files) => files,
        Err(message) => return fail(exit::HOST, "config", &message),
    };
    let dest = args.path.join(&args.name);
    if let Err(code) = create_or_fail(&args.path, &dest, &files) {
        return code;
    }
    let (language, build) = match args.lang {
        Lang::Python => (
            "Python",
            vec![
                "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt".to_owned(),
                format!(
                    ".venv/bin/componentize-py -d wit -w plugin componentize app -o {}.wasm",
                    args.name
                ),
            ],
        ),
        _ => ("JavaScript", vec!["npm ci && npm run build".to_owned()]),
    };
    println!(
        "created {language} plugin `{}` in {} (contract {}@{})",
        args.name,
        dest.display(),
        capsule_host::CONTRACT_PACKAGE,
        sdk.contract_version
    );
    println!();
    println!("next:");
    println!("  cd {}", dest.display());
    for line in build {
        println!("  {line}");
    }
    println!("  capsule keygen --out dev");
    println!("  capsule sign {}.wasm --key dev.key", args.name);
    println!("  capsule check --config capsule.toml");
    println!("then README.md shows how to run it.");
    exit::code(exit::OK)
}

/// The scaffold's files, relative to its directory.
fn render(name: &str, sdk: &Sdk, lang: Lang) -> Result<Vec<(String, String)>, String> {
    let wit = sdk
        .vendored
        .iter()
        .find(|(path, _)| path == "wit/plugin.wit")
        .map(|(_, text)| text.clone())
        .ok_or("this capsule carries no contract (wit/plugin.wit)")?;
    let fill = |template: &str| {
        template
            .replace("__USAGE__", include_str!("templates/handler.md"))
            .replace("__NAME__", name)
            .replace("__CONTRACT__", &sdk.contract_version)
            .replace("__MEMORY__", "64MiB")
    };
    let mut files = vec![
        ("wit/plugin.wit".to_owned(), wit),
        (
            "capsule.toml".to_owned(),
            fill(include_str!("templates/handler.toml")),
        ),
        (
            ".gitignore".to_owned(),
            include_str!("templates/polyglot-gitignore").to_owned(),
        ),
    ];
    match lang {
        Lang::Python => files.extend([
            (
                "app.py".to_owned(),
                fill(include_str!("templates/python-app.py")),
            ),
            ("capsule.py".to_owned(), PYTHON_HELPER.to_owned()),
            (
                "requirements.txt".to_owned(),
                PYTHON_REQUIREMENTS.to_owned(),
            ),
            (
                "README.md".to_owned(),
                fill(include_str!("templates/python-README.md")),
            ),
        ]),
        Lang::Js => files.extend([
            (
                "app.js".to_owned(),
                fill(include_str!("templates/js-app.js")),
            ),
            ("capsule.js".to_owned(), JS_HELPER.to_owned()),
            ("package.json".to_owned(), package_json(name)?),
            ("package-lock.json".to_owned(), package_lock(name)?),
            (
                "README.md".to_owned(),
                fill(include_str!("templates/js-README.md")),
            ),
        ]),
        Lang::Rust => return Err("a Rust plugin is a crate; see `capsule new`".into()),
    }
    Ok(files)
}

/// The plugin's `package.json`: the examples' pinned toolchain, named after
/// the plugin, with `npm run build`.
fn package_json(name: &str) -> Result<String, String> {
    let mut package: serde_json::Value = serde_json::from_str(JS_PACKAGE)
        .map_err(|err| format!("the embedded package.json does not parse: {err}"))?;
    let object = package
        .as_object_mut()
        .ok_or("the embedded package.json is not an object")?;
    object.insert("name".into(), name.to_ascii_lowercase().into());
    object.insert("version".into(), "0.1.0".into());
    object.insert(
        "description".into(),
        format!("The Capsule plugin {name}, in JavaScript").into(),
    );
    object.insert(
        "scripts".into(),
        serde_json::json!({
            "build": format!("componentize-js --wit wit --world-name plugin -o {name}.wasm app.js")
        }),
    );
    let mut text = serde_json::to_string_pretty(&package).map_err(|err| err.to_string())?;
    text.push('\n');
    Ok(text)
}

/// The examples' lock file under the plugin's name, so `npm ci` installs
/// exactly what the examples were built and tested with.
fn package_lock(name: &str) -> Result<String, String> {
    let mut lock: serde_json::Value = serde_json::from_str(JS_LOCK)
        .map_err(|err| format!("the embedded package-lock.json does not parse: {err}"))?;
    let name = serde_json::Value::from(name.to_ascii_lowercase());
    lock["name"] = name.clone();
    if let Some(root) = lock
        .pointer_mut("/packages/")
        .and_then(|root| root.as_object_mut())
    {
        root.insert("name".into(), name);
        root.insert("version".into(), "0.1.0".into());
    }
    let mut text = serde_json::to_string_pretty(&lock).map_err(|err| err.to_string())?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(lang: Lang) -> Vec<(String, String)> {
        render("demo-plugin", &Sdk::embedded().unwrap(), lang).unwrap()
    }

    fn file<'a>(files: &'a [(String, String)], path: &str) -> &'a str {
        &files.iter().find(|(p, _)| p == path).unwrap().1
    }

    #[test]
    fn a_python_scaffold_has_the_helper_the_pins_and_a_valid_policy() {
        let files = files(Lang::Python);
        assert_eq!(file(&files, "capsule.py"), PYTHON_HELPER);
        assert!(file(&files, "requirements.txt").contains("componentize-py=="));
        assert!(file(&files, "app.py").contains("Plugin(\"demo-plugin\""));
        let policy: toml::Table = toml::from_str(file(&files, "capsule.toml")).unwrap();
        assert_eq!(policy["host"]["limits"]["memory"].as_str(), Some("64MiB"));
        assert!(policy["plugins"].get("demo-plugin").is_some());
        for (path, text) in &files {
            for placeholder in ["__NAME__", "__CONTRACT__", "__MEMORY__", "__USAGE__"] {
                assert!(!text.contains(placeholder), "{path} has {placeholder} left");
            }
        }
    }

    #[test]
    fn a_js_scaffold_pins_the_toolchain_and_builds_with_npm() {
        let files = files(Lang::Js);
        let package: serde_json::Value =
            serde_json::from_str(file(&files, "package.json")).unwrap();
        assert_eq!(package["name"], "demo-plugin");
        assert!(
            package["dependencies"]["@bytecodealliance/componentize-js"]
                .as_str()
                .is_some_and(|version| version.chars().all(|c| c.is_ascii_digit() || c == '.'))
        );
        assert!(
            package["scripts"]["build"]
                .as_str()
                .unwrap()
                .contains("-o demo-plugin.wasm")
        );
        assert!(file(&files, "app.js").contains("capsule:plugin/config@0."));
        let lock: serde_json::Value =
            serde_json::from_str(file(&files, "package-lock.json")).unwrap();
        assert_eq!(lock["name"], "demo-plugin");
        assert_eq!(lock["packages"][""]["name"], "demo-plugin");
        assert_eq!(
            lock["packages"][""]["dependencies"], package["dependencies"],
            "the lock pins what package.json asks for"
        );
    }
}
