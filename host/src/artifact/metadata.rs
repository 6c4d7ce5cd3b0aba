//! Distribution metadata: what a marketplace or registry shows about a plugin
//! (authors, license, links, tags, the contract it needs and the grants it
//! needs to be useful), carried in the static manifest so the signature
//! covers it and `capsule inspect`, `GET /v1/plugins` and `capsule search`
//! read one source.
//!
//! The Rust SDK fills it at build time from the plugin crate's `Cargo.toml`
//! (`[package]` and `[package.metadata.capsule]`). Everything here comes from
//! the plugin's author, so every list and string is bounded.

use serde::{Deserialize, Serialize};

/// The most authors, tags, categories or grants in one list.
pub const MAX_METADATA_ITEMS: usize = 32;
/// The longest author, license or grant entry.
pub const MAX_METADATA_TEXT_BYTES: usize = 256;
/// The longest link (homepage, repository, documentation).
pub const MAX_LINK_BYTES: usize = 2048;
/// The longest tag or category.
pub const MAX_TAG_BYTES: usize = 64;

/// A plugin's distribution metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Who wrote it (`Name <email>`, as Cargo writes authors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    /// An SPDX license expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Its home page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// Where its source lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Where its documentation lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documentation: Option<String>,
    /// Search words (lowercase letters, digits and `-`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Marketplace categories (`image-processing`, `data/validation`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// The oldest `capsule:plugin` contract version it runs against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_contract: Option<String>,
    /// The host services it must be granted to be useful (`kv`, `http`,
    /// …): `capsule check` warns when a policy leaves one out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
}

impl Metadata {
    /// Checks the bounds and shapes: every list at most
    /// [`MAX_METADATA_ITEMS`] long, no control characters, links and texts
    /// bounded, tags and categories in a plain alphabet, `min_contract` semver.
    pub fn check(&self) -> Result<(), String> {
        let lists = [
            ("authors", &self.authors),
            ("tags", &self.tags),
            ("categories", &self.categories),
            ("grants", &self.grants),
        ];
        for (what, list) in lists {
            if list.len() > MAX_METADATA_ITEMS {
                return Err(format!(
                    "metadata.{what} has {} entries; at most {MAX_METADATA_ITEMS} are allowed",
                    list.len()
                ));
            }
        }
        for author in &self.authors {
            text("metadata.authors", author, MAX_METADATA_TEXT_BYTES)?;
        }
        if let Some(license) = &self.license {
            text("metadata.license", license, MAX_METADATA_TEXT_BYTES)?;
        }
        for (what, link) in [
            ("homepage", &self.homepage),
            ("repository", &self.repository),
            ("documentation", &self.documentation),
        ] {
            if let Some(link) = link {
                text(&format!("metadata.{what}"), link, MAX_LINK_BYTES)?;
                if !(link.starts_with("https://") || link.starts_with("http://")) {
                    return Err(format!(
                        "metadata.{what} `{}` is not an http(s) link",
                        link.escape_debug()
                    ));
                }
            }
        }
        for tag in &self.tags {
            word("metadata.tags", tag, false)?;
        }
        for category in &self.categories {
            word("metadata.categories", category, true)?;
        }
        for grant in &self.grants {
            word("metadata.grants", grant, false)?;
        }
        if let Some(version) = &self.min_contract {
            semver::Version::parse(version).map_err(|err| {
                format!(
                    "metadata.min_contract `{}` is not semver: {err}",
                    version.escape_debug()
                )
            })?;
        }
        Ok(())
    }
}

fn text(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(format!(
            "{what} `{}` must be 1 to {max} bytes without control characters",
            value.escape_debug()
        ));
    }
    Ok(())
}

/// A tag, category or grant name: lowercase ASCII letters, digits, `-` and
/// `_` (and `/` between the levels of a category), starting with a letter
/// or digit.
fn word(what: &str, value: &str, nested: bool) -> Result<(), String> {
    let allowed = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || (nested && c == '/')
    };
    let starts_well = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !starts_well || value.len() > MAX_TAG_BYTES || !value.chars().all(allowed) {
        return Err(format!(
            "{what} `{}` must be 1 to {MAX_TAG_BYTES} lowercase letters, digits, `-` or `_`{}",
            value.escape_debug(),
            if nested {
                " (levels joined by `/`)"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        Metadata {
            authors: vec!["Ada <ada@example.com>".into()],
            license: Some("Apache-2.0".into()),
            homepage: Some("https://example.com/hello".into()),
            repository: Some("https://github.com/acme/hello".into()),
            documentation: None,
            tags: vec!["greeting".into(), "demo".into()],
            categories: vec!["examples/basics".into()],
            min_contract: Some("0.2.0".into()),
            grants: vec!["kv".into(), "log".into()],
        }
    }

    #[test]
    fn good_metadata_passes_and_each_bad_field_is_named() {
        metadata().check().unwrap();
        type Change = Box<dyn Fn(&mut Metadata)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|m| m.tags = vec!["t".into(); MAX_METADATA_ITEMS + 1]),
                "metadata.tags has 33",
            ),
            (
                Box::new(|m| m.tags[0] = "Greeting".into()),
                "metadata.tags `Greeting`",
            ),
            (
                Box::new(|m| m.grants[0] = "kv/x".into()),
                "metadata.grants `kv/x`",
            ),
            (
                Box::new(|m| m.homepage = Some("javascript:alert(1)".into())),
                "not an http(s) link",
            ),
            (
                Box::new(|m| m.authors[0] = "a\u{1b}[31m".into()),
                "control characters",
            ),
            (
                Box::new(|m| {
                    m.repository = Some(format!("https://{}", "x".repeat(MAX_LINK_BYTES)))
                }),
                "1 to 2048 bytes",
            ),
            (
                Box::new(|m| m.min_contract = Some("zero".into())),
                "not semver",
            ),
        ];
        for (change, expected) in cases {
            let mut bad = metadata();
            change(&mut bad);
            let err = bad.check().unwrap_err();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }
}
