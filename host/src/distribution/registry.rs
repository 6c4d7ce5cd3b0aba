//! Talking to an OCI registry: push a signed component as a Wasm artifact,
//! pull one into the local store, list repositories and tags.
//!
//! oci-client does what the protocol makes hard — the token dance of
//! `WWW-Authenticate` challenges, chunked blob uploads. Everything read
//! from the registry (manifests, blobs, listings) goes through
//! [`Registry::get_bounded`] or a streamed blob download instead, because a
//! registry's answer is untrusted input: each response is bounded before
//! it is read, and every request times out.

use std::time::Duration;

use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HeaderValue};

use super::layout::{self, Artifact, ImageManifest};
use super::store::{StoredRef, sha256_digest};
use super::{
    DistributionError, MAX_LISTED, MAX_LISTING_BYTES, MAX_OCI_MANIFEST_BYTES, OciOptions,
    OciReference, Store,
};

/// Environment variables that give registry credentials, before the docker
/// config file is asked.
pub const USERNAME_ENV: &str = "CAPSULE_REGISTRY_USERNAME";
/// See [`USERNAME_ENV`].
pub const PASSWORD_ENV: &str = "CAPSULE_REGISTRY_PASSWORD";

/// The tags fetched per repository by a search.
const TAGS_PER_REPOSITORY: usize = 100;
/// The longest registry error message kept.
const MAX_ERROR_BYTES: u64 = 1024;

/// What a push wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pinned to the manifest's digest.
    pub reference: OciReference,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The component's digest (the layer).
    pub component_digest: String,
}

/// What a pull found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The record the store keeps for the reference.
    pub stored: StoredRef,
    /// The component's file in the store.
    pub path: std::path::PathBuf,
    /// Whether the component was already in the store (nothing downloaded).
    pub cached: bool,
}

/// One repository of a search, with its tags and each tag's annotations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepositoryListing {
    /// `acme/hello`.
    pub repository: String,
    /// Its tags (the most recent [`TAGS_PER_REPOSITORY`] the registry
    /// lists), each with its manifest's annotations, or why they could not
    /// be read.
    pub tags: Vec<TagListing>,
}

/// One tag of a search.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TagListing {
    /// The tag.
    pub tag: String,
    /// The manifest's digest.
    pub digest: Option<String>,
    /// Its annotations (the plugin's metadata).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Why the manifest could not be read, if it could not.
    pub error: Option<String>,
}

/// A connection to OCI registries.
pub struct Registry {
    oci: Client,
    http: reqwest::Client,
    options: OciOptions,
}

impl Registry {
    /// A client with `options` (plain HTTP for loopback and `insecure`
    /// registries, HTTPS for every other).
    pub fn new(options: &OciOptions) -> Result<Registry, DistributionError> {
        crate::tls::install_provider();
        let oci = Client::new(ClientConfig {
            // Loopback registries are recognised per request
            // (`scheme`); oci-client needs them listed by name.
            protocol: ClientProtocol::HttpsExcept(Vec::new()),
            read_timeout: Some(options.timeout),
            connect_timeout: Some(Duration::from_secs(10).min(options.timeout)),
            ..ClientConfig::default()
        });
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(Duration::from_secs(10).min(options.timeout))
            .user_agent(concat!("capsule/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| DistributionError::Unreachable {
                registry: "(none)".into(),
                cause: format!("cannot start an HTTP client: {err}"),
            })?;
        Ok(Registry {
            oci,
            http,
            options: options.clone(),
        })
    }

    /// `http` for loopback and listed registries, else `https`.
    fn scheme(&self, reference: &OciReference) -> &'static str {
        if reference.is_loopback() || self.options.insecure.contains(&reference.registry) {
            "http"
        } else {
            "https"
        }
    }

    /// oci-client's client, told which registries speak plain HTTP.
    fn oci_for(&self, reference: &OciReference) -> Client {
        let mut exceptions = self.options.insecure.clone();
        if reference.is_loopback() {
            exceptions.push(reference.registry.clone());
        }
        if exceptions.is_empty() {
            return self.oci.clone();
        }
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(exceptions),
            read_timeout: Some(self.options.timeout),
            connect_timeout: Some(Duration::from_secs(10).min(self.options.timeout)),
            ..ClientConfig::default()
        })
    }

    fn base(&self, reference: &OciReference) -> String {
        let registry = if reference.registry == super::reference::DEFAULT_REGISTRY {
            "index.docker.io"
        } else {
            &reference.registry
        };
        format!("{}://{registry}/v2", self.scheme(reference))
    }

    /// Pushes `component` (already signed and checked by the caller) to
    /// `reference` as a Wasm artifact.
    pub async fn push(
        &self,
        reference: &OciReference,
        component: &[u8],
        artifact: &Artifact,
    ) -> Result<Pushed, DistributionError> {
        let target = to_oci(reference);
        let oci = self.oci_for(reference);
        let auth = credentials(&reference.registry);
        oci.auth(&target, &auth, RegistryOperation::Push)
            .await
            .map_err(|err| self.oci_error(reference, "the push", err))?;
        oci.push_blob(
            &target,
            artifact.config.clone(),
            &artifact.config_descriptor.digest,
        )
        .await
        .map_err(|err| self.oci_error(reference, "the config upload", err))?;
        oci.push_blob(&target, component.to_vec(), &artifact.component.digest)
            .await
            .map_err(|err| self.oci_error(reference, "the component upload", err))?;
        oci.push_manifest_raw(
            &target,
            artifact.manifest.clone(),
            HeaderValue::from_static(layout::IMAGE_MANIFEST),
        )
        .await
        .map_err(|err| self.oci_error(reference, "the manifest upload", err))?;
        let manifest_digest = sha256_digest(&artifact.manifest);
        Ok(Pushed {
            reference: reference.pinned(&manifest_digest),
            manifest_digest,
            component_digest: artifact.component.digest.clone(),
        })
    }

    /// Resolves `reference` to its manifest (by digest when pinned: the
    /// bytes must hash to it).
    pub async fn manifest(
        &self,
        reference: &OciReference,
    ) -> Result<(ImageManifest, String), DistributionError> {
        let url = format!(
            "{}/{}/manifests/{}",
            self.base(reference),
            reference.repository,
            reference.manifest_reference()
        );
        let auth = self.authorization(reference).await?;
        let body = self
            .get_bounded(
                reference,
                &url,
                layout::IMAGE_MANIFEST,
                auth.as_ref(),
                MAX_OCI_MANIFEST_BYTES,
                "manifest",
            )
            .await?;
        let digest = sha256_digest(&body);
        if let Some(expected) = &reference.digest
            && *expected != digest
        {
            return Err(DistributionError::DigestMismatch {
                reference: reference.to_string(),
                what: "manifest",
                expected: expected.clone(),
                actual: digest,
            });
        }
        let max_component = crate::input::MAX_COMPONENT_BYTES;
        let manifest = layout::parse_manifest(&reference.to_string(), &body, max_component)?;
        Ok((manifest, digest))
    }

    /// Pulls `reference` into `store` (the component only, streamed and
    /// checked against its digest) and remembers what it resolved to.
    pub async fn pull(
        &self,
        reference: &OciReference,
        store: &Store,
    ) -> Result<Pulled, DistributionError> {
        let (manifest, manifest_digest) = self.manifest(reference).await?;
        let layer = &manifest.layers[0];
        let stored = StoredRef {
            reference: reference.to_string(),
            manifest_digest,
            component_digest: layer.digest.clone(),
            annotations: manifest.annotations.clone(),
            pulled_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        if let Some(path) = store.verified_blob(&layer.digest) {
            store.remember(reference, &stored)?;
            return Ok(Pulled {
                stored,
                path,
                cached: true,
            });
        }
        let url = format!(
            "{}/{}/blobs/{}",
            self.base(reference),
            reference.repository,
            layer.digest
        );
        let auth = self.authorization(reference).await?;
        let mut response = self.send(reference, &url, "*/*", auth.as_ref()).await?;
        if response.content_length().is_some_and(|n| n > layer.size) {
            return Err(DistributionError::TooLarge {
                reference: reference.to_string(),
                what: "component",
                limit: layer.size,
            });
        }
        let mut writer = store.writer(&reference.to_string(), &layer.digest, layer.size)?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport(reference, err))?
        {
            writer.write(&chunk)?;
        }
        let path = writer.finish()?;
        store.remember(reference, &stored)?;
        Ok(Pulled {
            stored,
            path,
            cached: false,
        })
    }

    /// The repositories of the registry `reference` names (its repository
    /// part is ignored), at most [`MAX_LISTED`].
    pub async fn catalog(
        &self,
        reference: &OciReference,
    ) -> Result<Vec<String>, DistributionError> {
        #[derive(serde::Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let auth = basic(&credentials(&reference.registry));
        let mut repositories = Vec::new();
        let mut last: Option<String> = None;
        while repositories.len() < MAX_LISTED {
            let mut url = format!("{}/_catalog?n=100", self.base(reference));
            if let Some(last) = &last {
                url.push_str(&format!("&last={}", query_escape(last)));
            }
            let page: Catalog = self
                .get_json(reference, &url, auth.as_ref(), "catalog")
                .await?;
            let page = page.repositories.unwrap_or_default();
            let done = page.len() < 100;
            last = page.last().cloned();
            repositories.extend(page);
            if done || last.is_none() {
                break;
            }
        }
        repositories.truncate(MAX_LISTED);
        Ok(repositories)
    }

    /// The tags of `reference`'s repository, at most `max`.
    pub async fn tags(
        &self,
        reference: &OciReference,
        max: usize,
    ) -> Result<Vec<String>, DistributionError> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let url = format!(
            "{}/{}/tags/list?n={max}",
            self.base(reference),
            reference.repository
        );
        let auth = self.authorization(reference).await?;
        let tags: Tags = self
            .get_json(reference, &url, auth.as_ref(), "tag list")
            .await?;
        let mut tags = tags.tags.unwrap_or_default();
        tags.truncate(max);
        Ok(tags)
    }

    /// Every repository of the registry with its tags and their metadata;
    /// with `tag`, only the plugins whose metadata carries that tag.
    pub async fn search(
        &self,
        registry: &OciReference,
        tag: Option<&str>,
    ) -> Result<Vec<RepositoryListing>, DistributionError> {
        let mut listings = Vec::new();
        let mut manifests_read = 0;
        for repository in self.catalog(registry).await? {
            let Ok(repo) = OciReference::parse(&format!("{}/{repository}", registry.registry))
            else {
                continue;
            };
            let mut tags = Vec::new();
            for name in self
                .tags(&repo, TAGS_PER_REPOSITORY)
                .await
                .unwrap_or_default()
            {
                if manifests_read >= MAX_LISTED {
                    break;
                }
                manifests_read += 1;
                let tagged = OciReference {
                    tag: Some(name.clone()),
                    digest: None,
                    ..repo.clone()
                };
                let listing = match self.manifest(&tagged).await {
                    Ok((manifest, digest)) => TagListing {
                        tag: name,
                        digest: Some(digest),
                        annotations: manifest.annotations,
                        error: None,
                    },
                    Err(err) => TagListing {
                        tag: name,
                        digest: None,
                        annotations: Default::default(),
                        error: Some(err.to_string()),
                    },
                };
                let wanted = tag.is_none_or(|wanted| {
                    listing
                        .annotations
                        .get(layout::keys::TAGS)
                        .is_some_and(|tags| tags.split(',').any(|t| t == wanted))
                });
                if wanted {
                    tags.push(listing);
                }
            }
            if !tags.is_empty() || tag.is_none() {
                listings.push(RepositoryListing { repository, tags });
            }
        }
        Ok(listings)
    }

    /// The `Authorization` header for pulling `reference`: a bearer token
    /// from the registry's token service, basic credentials, or none.
    async fn authorization(
        &self,
        reference: &OciReference,
    ) -> Result<Option<HeaderValue>, DistributionError> {
        let auth = credentials(&reference.registry);
        let token = self
            .oci_for(reference)
            .auth(&to_oci(reference), &auth, RegistryOperation::Pull)
            .await
            .map_err(|err| self.oci_error(reference, "the pull", err))?;
        Ok(match token {
            Some(token) => HeaderValue::from_str(&format!("Bearer {token}")).ok(),
            None => basic(&auth),
        })
    }

    async fn send(
        &self,
        reference: &OciReference,
        url: &str,
        accept: &str,
        auth: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, DistributionError> {
        let mut request = self.http.get(url).header(ACCEPT, accept);
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| self.transport(reference, err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == StatusCode::NOT_FOUND {
            return Err(DistributionError::NotFound {
                reference: reference.to_string(),
            });
        }
        // The registry's explanation, bounded.
        let mut message = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            message.extend_from_slice(&chunk);
            if message.len() as u64 >= MAX_ERROR_BYTES {
                message.truncate(MAX_ERROR_BYTES as usize);
                break;
            }
        }
        let message =
            crate::text::for_log(&String::from_utf8_lossy(&message), MAX_ERROR_BYTES as usize)
                .into_owned();
        Err(DistributionError::Refused {
            reference: reference.to_string(),
            what: "the pull",
            cause: format!("{status}: {}", message.trim()),
        })
    }

    /// GETs `url`, refusing a body longer than `limit` before and while it
    /// is read.
    async fn get_bounded(
        &self,
        reference: &OciReference,
        url: &str,
        accept: &str,
        auth: Option<&HeaderValue>,
        limit: u64,
        what: &'static str,
    ) -> Result<Bytes, DistributionError> {
        let mut response = self.send(reference, url, accept, auth).await?;
        let too_large = || DistributionError::TooLarge {
            reference: reference.to_string(),
            what,
            limit,
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| self.transport(reference, err))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }

    /// A listing (catalog or tags): JSON of at most [`MAX_LISTING_BYTES`].
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        reference: &OciReference,
        url: &str,
        auth: Option<&HeaderValue>,
        what: &'static str,
    ) -> Result<T, DistributionError> {
        let body = self
            .get_bounded(
                reference,
                url,
                "application/json",
                auth,
                MAX_LISTING_BYTES,
                what,
            )
            .await?;
        serde_json::from_slice(&body).map_err(|err| DistributionError::Malformed {
            reference: reference.to_string(),
            what,
            cause: err.to_string(),
        })
    }

    fn transport(&self, reference: &OciReference, err: reqwest::Error) -> DistributionError {
        DistributionError::Unreachable {
            registry: reference.registry.clone(),
            cause: error_chain(&err),
        }
    }

    fn oci_error(
        &self,
        reference: &OciReference,
        what: &'static str,
        err: oci_client::errors::OciDistributionError,
    ) -> DistributionError {
        use oci_client::errors::OciDistributionError as E;
        match err {
            E::RequestError(err) => self.transport(reference, err),
            other => DistributionError::Refused {
                reference: reference.to_string(),
                what,
                cause: crate::text::for_log(&error_chain(&other), MAX_ERROR_BYTES as usize)
                    .into_owned(),
            },
        }
    }
}

/// The credentials for `registry`: `CAPSULE_REGISTRY_USERNAME` and
/// `CAPSULE_REGISTRY_PASSWORD`, else the docker config file
/// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, with its
/// credential helpers), else none.
pub fn credentials(registry: &str) -> RegistryAuth {
    if let (Ok(user), Ok(password)) = (std::env::var(USERNAME_ENV), std::env::var(PASSWORD_ENV)) {
        return RegistryAuth::Basic(user, password);
    }
    match docker_credential::get_credential(registry) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            RegistryAuth::Basic(user, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            RegistryAuth::Bearer(token)
        }
        Err(_) => RegistryAuth::Anonymous,
    }
}

fn basic(auth: &RegistryAuth) -> Option<HeaderValue> {
    use base64ct::Encoding;
    match auth {
        RegistryAuth::Basic(user, password) => {
            let encoded = base64ct::Base64::encode_string(format!("{user}:{password}").as_bytes());
            HeaderValue::from_str(&format!("Basic {encoded}")).ok()
        }
        RegistryAuth::Bearer(token) => HeaderValue::from_str(&format!("Bearer {token}")).ok(),
        RegistryAuth::Anonymous => None,
    }
}

fn to_oci(reference: &OciReference) -> oci_client::Reference {
    match (&reference.tag, &reference.digest) {
        (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
            reference.registry.clone(),
            reference.repository.clone(),
            tag.clone(),
            digest.clone(),
        ),
        (_, Some(digest)) => oci_client::Reference::with_digest(
            reference.registry.clone(),
            reference.repository.clone(),
            digest.clone(),
        ),
        (tag, None) => oci_client::Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            tag.clone()
                .unwrap_or_else(|| super::reference::DEFAULT_TAG.into()),
        ),
    }
}

fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}
