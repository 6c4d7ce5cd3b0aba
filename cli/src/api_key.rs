//! `capsule api-key`: makes an API key for the HTTP API and the policy entry
//! that grants it (only the key's digest goes into the policy).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use capsule_host::access::{NamePattern, Rate, Role, digest_of, generate_key};
use capsule_host::services::events::TopicPattern;
use clap::Args;

use crate::exit;

/// Arguments of `capsule api-key`.
#[derive(Args)]
pub struct ApiKeyArgs {
    /// Who holds the key (shown in the audit log).
    #[arg(long)]
    name: String,
    /// `call`, `view` or `admin`.
    #[arg(long)]
    role: String,
    /// A plugin a `call` key may call (a name, a prefix ending in `*`, or
    /// `*`); repeat for more.
    #[arg(long = "plugin", value_name = "PATTERN")]
    plugins: Vec<String>,
    /// A pipeline a `call` key may call; repeat for more.
    #[arg(long = "pipeline", value_name = "PATTERN")]
    pipelines: Vec<String>,
    /// A topic pattern a `call` key may publish to; repeat for more.
    #[arg(long = "topic", value_name = "PATTERN")]
    topics: Vec<String>,
    /// Requests allowed, e.g. `100/s`, `600/min`.
    #[arg(long)]
    rate: Option<String>,
    /// Requests allowed at once after a quiet spell (default: the rate's
    /// count).
    #[arg(long, requires = "rate")]
    burst: Option<u32>,
    /// Append the entry to this policy file (apply it, or send SIGHUP, to
    /// put the key in force) instead of printing it.
    #[arg(long, value_name = "FILE.toml")]
    append_to: Option<PathBuf>,
}

/// Prints a new key on the first line, then (or into `--append-to`) the
/// `[[host.api_keys]]` entry with its digest.
pub fn api_key(args: ApiKeyArgs) -> ExitCode {
    match entry(&args) {
        Ok((key, entry)) => {
            if let Some(path) = &args.append_to {
                let appended = std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .and_then(|mut file| write!(file, "\n{entry}"));
                if let Err(err) = appended {
                    eprintln!("error [io]: {}: {err}", path.display());
                    return exit::code(exit::USAGE);
                }
                println!("{key}");
                eprintln!(
                    "added API key `{}` to {}; the key above is shown only now",
                    args.name,
                    path.display()
                );
            } else {
                println!(
                    "{key}\n\n# the key above is shown only now; the policy keeps its digest:\n{entry}"
                );
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error [config]: {message}");
            exit::code(exit::USAGE)
        }
    }
}

/// A new key and its policy entry, every value checked as the policy will.
fn entry(args: &ApiKeyArgs) -> Result<(String, String), String> {
    capsule_host::bounds::plugin_name(&args.name)
        .map_err(|message| message.replace("plugin name", "key name"))?;
    let role = Role::parse(&args.role)?;
    for pattern in args.plugins.iter().chain(&args.pipelines) {
        NamePattern::parse(pattern)?;
    }
    for pattern in &args.topics {
        TopicPattern::parse(pattern)?;
    }
    let scoped = !(args.plugins.is_empty() && args.pipelines.is_empty() && args.topics.is_empty());
    if role == Role::Call && !scoped {
        return Err("a `call` key needs --plugin, --pipeline or --topic".to_owned());
    }
    if role != Role::Call && scoped {
        return Err("only a `call` key takes --plugin, --pipeline or --topic".to_owned());
    }
    if let Some(rate) = &args.rate {
        Rate::parse(rate, args.burst)?;
    }
    let key = generate_key()?;
    // Every value was checked against a charset without quotes or
    // backslashes, so quoting them is enough.
    let list = |values: &[String]| {
        let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut entry = format!(
        "[[host.api_keys]]\nname = \"{}\"\nrole = \"{}\"\ndigest = \"{}\"\n",
        args.name,
        role.as_str(),
        digest_of(&key)
    );
    for (field, values) in [
        ("plugins", &args.plugins),
        ("pipelines", &args.pipelines),
        ("topics", &args.topics),
    ] {
        if !values.is_empty() {
            entry.push_str(&format!("{field} = {}\n", list(values)));
        }
    }
    if let Some(rate) = &args.rate {
        entry.push_str(&format!("rate = \"{}\"\n", rate.trim()));
    }
    if let Some(burst) = args.burst {
        entry.push_str(&format!("burst = {burst}\n"));
    }
    Ok((key, entry))
}
