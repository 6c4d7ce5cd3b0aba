//! OCI references (`localhost:5000/acme/hello:0.1.0`,
//! `ghcr.io/acme/hello@sha256:…`), parsed by the distribution spec's
//! grammar so the policy can check them without reaching any registry.

use std::fmt;

use super::DistributionError;

/// The registry of a reference that names none (as Docker does).
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of a reference that names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// The longest reference accepted.
pub const MAX_REFERENCE_BYTES: usize = 512;

/// A parsed reference: a repository in a registry, by tag, by digest or
/// both (the digest then decides what is pulled).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct OciReference {
    /// `host[:port]`.
    pub registry: String,
    /// `acme/hello`.
    pub repository: String,
    /// `0.1.0`, when given (or `latest` when neither tag nor digest is).
    pub tag: Option<String>,
    /// `sha256:<64 hex>`, when pinned.
    pub digest: Option<String>,
}

impl OciReference {
    /// Parses `REF` or `oci://REF`.
    pub fn parse(text: &str) -> Result<OciReference, DistributionError> {
        let bad = |cause: &str| DistributionError::BadReference {
            reference: text.escape_debug().to_string(),
            cause: cause.to_owned(),
        };
        if text.len() > MAX_REFERENCE_BYTES {
            return Err(bad(&format!("longer than {MAX_REFERENCE_BYTES} bytes")));
        }
        let rest = text.strip_prefix("oci://").unwrap_or(text);
        if rest.is_empty() {
            return Err(bad("it is empty"));
        }
        let (name, digest) = match rest.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (rest, None),
        };
        if let Some(digest) = digest {
            let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
                bad("only sha256 digests (`@sha256:<64 hex digits>`) are supported")
            })?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(bad("a digest is `sha256:` and 64 lowercase hex digits"));
            }
        }
        // A tag follows the last `:` after the last `/` (a `:` before it is
        // a registry port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !valid {
                return Err(bad(
                    "a tag is 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
                ));
            }
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ if path.contains('/') => (DEFAULT_REGISTRY.to_owned(), path.to_owned()),
            _ => (DEFAULT_REGISTRY.to_owned(), format!("library/{path}")),
        };
        if registry.is_empty()
            || registry
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("the registry is not a host name"));
        }
        for component in repository.split('/') {
            if !repository_component(component) {
                return Err(bad(
                    "a repository is `/`-separated lowercase letters and digits, joined by `.`, `_`, `__` or `-`",
                ));
            }
        }
        let tag = match (tag, digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(OciReference {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_owned),
        })
    }

    /// What a registry's `/v2/<repository>/manifests/<…>` is asked for: the
    /// digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The registry's host, without its port.
    pub fn host(&self) -> &str {
        match self.registry.strip_prefix('[') {
            // `[::1]:5000`
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => self.registry.split(':').next().unwrap_or(&self.registry),
        }
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`,
    /// `::1`): plain HTTP is allowed there.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// This reference pinned to `digest` (keeping its tag for display).
    pub fn pinned(&self, digest: &str) -> OciReference {
        OciReference {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the spec's path component.
fn repository_component(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !bytes.first().is_some_and(|b| alnum(*b)) || !bytes.last().is_some_and(|b| alnum(*b)) {
        return false;
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        let run = rest.iter().take_while(|b| !alnum(**b)).count();
        let separator = &rest[..run];
        let valid = separator.is_empty()
            || matches!(separator, b"." | b"_" | b"__")
            || separator.iter().all(|b| *b == b'-');
        if !valid {
            return false;
        }
        let word = rest[run..].iter().take_while(|b| alnum(**b)).count();
        rest = &rest[run + word..];
    }
    true
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_the_distribution_spec_writes_them() {
        let r = OciReference::parse("oci://localhost:5000/acme/hello:0.1.0").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.tag.as_deref(),
                r.digest.as_deref()
            ),
            ("localhost:5000", "acme/hello", Some("0.1.0"), None)
        );
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "localhost:5000/acme/hello:0.1.0");

        let digest = format!("sha256:{}", "a".repeat(64));
        let r = OciReference::parse(&format!("ghcr.io/acme/hello@{digest}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), digest);
        assert!(!r.is_loopback());

        let r = OciReference::parse("hello").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/hello:latest");
        let r = OciReference::parse("[::1]:5000/a/b:v1").unwrap();
        assert_eq!(r.host(), "::1");
        assert!(r.is_loopback());
        let r = OciReference::parse("127.0.0.1:5000/a__b/c-d.e:v1").unwrap();
        assert!(r.is_loopback());
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (text, expected) in [
            ("", "empty"),
            ("oci://", "empty"),
            ("localhost:5000/Acme/hello:1", "repository"),
            ("localhost:5000/acme//hello:1", "repository"),
            ("localhost:5000/acme/hello:-1", "a tag"),
            ("localhost:5000/acme/hello@sha512:00", "only sha256"),
            ("localhost:5000/acme/hello@sha256:00", "64 lowercase hex"),
        ] {
            let err = OciReference::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{text}: {err} should mention {expected}"
            );
        }
        let long = format!("localhost/{}", "a".repeat(MAX_REFERENCE_BYTES));
        assert!(OciReference::parse(&long).is_err());
    }
}
