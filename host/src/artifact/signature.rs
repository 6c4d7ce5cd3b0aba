//! Plugin signatures in the WebAssembly tool-conventions format that
//! `wasmsign2` implements, so plugins signed by either tool verify in both.
//!
//! A signature is a custom section named `signature`, placed first in the
//! binary (or the same payload in a detached file). It holds sets of SHA-256
//! hashes, each signed by one or more Ed25519 keys over
//! `"wasmsig" ‖ 0x01 ‖ 0x01 ‖ 0x01 ‖ hash₁ ‖ … ‖ hashₙ`. A full signature's
//! hashes include the hash of every byte after the signature section. A
//! partial signature covers only the sections before a `signature_delimiter`
//! custom section.
//!
//! The signature section is attacker-controlled input, so checking it costs
//! a bounded amount of work: at most [`MAX_SIGNATURES_PER_SECTION`]
//! signatures are accepted at all, a signature is only verified if its set
//! of hashes actually covers this plugin's content, and only with the
//! trusted key its key id names.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::hex;
use super::keys::{KeyId, PublicKey, SecretKey};
use super::sections::{self, Reader, Section};

/// The custom section holding signatures.
pub const SIGNATURE_SECTION: &str = "signature";
/// The custom section that ends a signed range of sections.
pub const DELIMITER_SECTION: &str = "signature_delimiter";

const DOMAIN: &[u8] = b"wasmsig";
const SPEC_VERSION: u32 = 0x01;
const CONTENT_TYPE_WASM: u32 = 0x01;
const HASH_SHA256: u32 = 0x01;
const ALG_ED25519: u8 = 0x01;
/// The most signed hash sets in a section, and the most hashes in one set.
const MAX_HASHES: usize = 64;
/// The most signatures a signature section may carry, over all of its hash
/// sets. Each may cost an Ed25519 verification per trusted key, so a
/// section with more is refused outright rather than checked; real plugins
/// carry one signature per signer.
pub const MAX_SIGNATURES_PER_SECTION: usize = 64;

/// Why a plugin's signature does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// There is no signature at all.
    #[error("the plugin is not signed")]
    Unsigned,
    /// A signature is present but broken: tampered content, a corrupted or
    /// truncated signature, an unknown format.
    #[error("bad signature: {0}")]
    Bad(String),
    /// Signatures are intact, but none is by a trusted key.
    #[error("signed only by untrusted keys ({})", describe_ids(.key_ids))]
    UntrustedKey {
        /// The key ids the signatures name, if they name any.
        key_ids: Vec<String>,
    },
}

fn describe_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        "the signatures carry no key id".into()
    } else {
        format!("key ids {}", ids.join(", "))
    }
}

/// One signature in a plugin: who (if it says) and what it covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignatureInfo {
    /// The signer's key id as hex, if the signature names one.
    pub key_id: Option<String>,
    /// Whether it covers every byte after the signature section.
    pub full: bool,
}

/// A signature that verified with a trusted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The trusted keys that signed the plugin.
    pub signers: Vec<KeyId>,
    /// Whether the trusted signatures cover only part of the plugin (only
    /// possible when partial signatures are allowed).
    pub partial: bool,
    /// For a partial signature, where the covered prefix ends: a byte
    /// offset into the file (sections ending at or before it are signed).
    pub covered_until: Option<usize>,
}

#[derive(Debug, Clone)]
struct SignatureData {
    signed_hashes_set: Vec<SignedHashes>,
}

#[derive(Debug, Clone)]
struct SignedHashes {
    hashes: Vec<[u8; 32]>,
    signatures: Vec<SignatureEntry>,
}

#[derive(Debug, Clone)]
struct SignatureEntry {
    key_id: Option<Vec<u8>>,
    signature: Vec<u8>,
}

impl SignatureData {
    fn parse(bytes: &[u8]) -> Result<SignatureData, String> {
        let mut reader = Reader::new(bytes);
        let field = |reader: &mut Reader<'_>, what: &str| {
            reader
                .u32()
                .ok_or_else(|| format!("truncated signature section ({what})"))
        };
        // One byte each (varuint7), as wasmsign2 reads them: a padded
        // LEB128 (`81 00`) is not a version 1.
        let byte = |reader: &mut Reader<'_>, what: &str| match reader.byte() {
            Some(value) if value < 0x80 => Ok(u32::from(value)),
            Some(value) => Err(format!(
                "unsupported signature format ({what} byte {value:#04x})"
            )),
            None => Err(format!("truncated signature section ({what})")),
        };
        let version = byte(&mut reader, "version")?;
        let content_type = byte(&mut reader, "content type")?;
        let hash_function = byte(&mut reader, "hash function")?;
        if (version, content_type, hash_function) != (SPEC_VERSION, CONTENT_TYPE_WASM, HASH_SHA256)
        {
            return Err(format!(
                "unsupported signature format (version {version}, content type {content_type}, \
                 hash function {hash_function})"
            ));
        }
        let count = field(&mut reader, "set count")? as usize;
        if count > MAX_HASHES {
            return Err(format!("too many signed hash sets ({count})"));
        }
        let mut signed_hashes_set = Vec::with_capacity(count);
        let mut signatures = 0;
        for _ in 0..count {
            let set = reader.bytes().ok_or("truncated signed hash set")?;
            signed_hashes_set.push(SignedHashes::parse(set, &mut signatures)?);
        }
        if !reader.is_empty() {
            return Err("trailing bytes after the signatures".into());
        }
        Ok(SignatureData { signed_hashes_set })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for value in [SPEC_VERSION, CONTENT_TYPE_WASM, HASH_SHA256] {
            sections::write_u32(&mut out, value);
        }
        sections::write_u32(&mut out, self.signed_hashes_set.len() as u32);
        for set in &self.signed_hashes_set {
            sections::write_bytes(&mut out, &set.encode());
        }
        out
    }
}

impl SignedHashes {
    /// Parses one set; `signatures` counts the signature entries of the
    /// whole section so far, whatever their algorithm.
    fn parse(bytes: &[u8], signatures_so_far: &mut usize) -> Result<SignedHashes, String> {
        let mut reader = Reader::new(bytes);
        let count = reader.u32().ok_or("truncated hash count")? as usize;
        if count > MAX_HASHES {
            return Err(format!("too many hashes ({count})"));
        }
        let mut hashes = Vec::with_capacity(count);
        for _ in 0..count {
            let hash = reader.take(32).ok_or("truncated hash")?;
            hashes.push(hash.try_into().expect("32 bytes"));
        }
        let count = reader.u32().ok_or("truncated signature count")? as usize;
        *signatures_so_far = signatures_so_far.saturating_add(count);
        if *signatures_so_far > MAX_SIGNATURES_PER_SECTION {
            return Err(too_many_signatures());
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            let entry = reader.bytes().ok_or("truncated signature")?;
            let mut entry = Reader::new(entry);
            let key_id = entry.bytes().ok_or("truncated key id")?;
            let alg = entry.byte().ok_or("truncated algorithm id")?;
            let signature = entry.bytes().ok_or("truncated signature bytes")?;
            // Like wasmsign2, skip algorithms we do not know rather than
            // failing the whole section.
            if alg == ALG_ED25519 {
                signatures.push(SignatureEntry {
                    key_id: (!key_id.is_empty()).then(|| key_id.to_vec()),
                    signature: signature.to_vec(),
                });
            }
        }
        if !reader.is_empty() {
            return Err("trailing bytes in a signed hash set".into());
        }
        Ok(SignedHashes { hashes, signatures })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        sections::write_u32(&mut out, self.hashes.len() as u32);
        for hash in &self.hashes {
            out.extend_from_slice(hash);
        }
        sections::write_u32(&mut out, self.signatures.len() as u32);
        for signature in &self.signatures {
            let mut entry = Vec::new();
            sections::write_bytes(&mut entry, signature.key_id.as_deref().unwrap_or(&[]));
            entry.push(ALG_ED25519);
            sections::write_bytes(&mut entry, &signature.signature);
            sections::write_bytes(&mut out, &entry);
        }
        out
    }

    fn message(&self) -> Vec<u8> {
        signed_message(&self.hashes)
    }
}

fn too_many_signatures() -> String {
    format!(
        "too many signatures (a signature section may carry at most {MAX_SIGNATURES_PER_SECTION})"
    )
}

fn signed_message(hashes: &[[u8; 32]]) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&[
        SPEC_VERSION as u8,
        CONTENT_TYPE_WASM as u8,
        HASH_SHA256 as u8,
    ]);
    for hash in hashes {
        message.extend_from_slice(hash);
    }
    message
}

/// A plugin binary split into its signature (embedded or detached) and the
/// signed content, with the hashes a signature may cover.
struct Signed<'a> {
    signature: Option<&'a [u8]>,
    /// SHA-256 of every byte after the header and the embedded signature.
    full_hash: [u8; 32],
    /// Hashes of the content up to and including each delimiter section,
    /// with the offset where that delimiter ends.
    delimiter_hashes: Vec<([u8; 32], usize)>,
    /// Content sections in order (without the embedded signature).
    content: Vec<Section<'a>>,
}

impl<'a> Signed<'a> {
    fn read(bytes: &'a [u8], detached: Option<&'a [u8]>) -> Result<Signed<'a>, String> {
        let all = sections::split(bytes)
            .map_err(|err| format!("the file is truncated or corrupt: {err}"))?;
        // An embedded signature section is never part of the signed content.
        // A detached signature, when given, is the one that counts.
        let mut content = all.as_slice();
        let mut signature = detached;
        if let Some((first, rest)) = all.split_first()
            && let Some((SIGNATURE_SECTION, data)) = first.custom()
        {
            signature = signature.or(Some(data));
            content = rest;
        }
        let mut hasher = Sha256::new();
        let mut delimiter_hashes = Vec::new();
        for section in content {
            hasher.update(&bytes[section.range.clone()]);
            if section
                .custom()
                .is_some_and(|(name, _)| name == DELIMITER_SECTION)
            {
                delimiter_hashes.push((hasher.clone().finalize().into(), section.range.end));
            }
        }
        Ok(Signed {
            signature,
            full_hash: hasher.finalize().into(),
            delimiter_hashes,
            content: content.to_vec(),
        })
    }

    fn data(&self) -> Result<Option<SignatureData>, String> {
        self.signature.map(SignatureData::parse).transpose()
    }

    /// Whether a signed hash set covers every byte of the content.
    fn covers_all(&self, set: &SignedHashes) -> bool {
        set.hashes.contains(&self.full_hash)
    }

    /// Whether a signed hash set covers a prefix of the content that ends at
    /// a delimiter (a partial signature).
    fn covers_prefix(&self, set: &SignedHashes) -> bool {
        self.prefix_end(set).is_some()
    }

    /// Where the longest prefix a hash set covers ends, if it covers one.
    fn prefix_end(&self, set: &SignedHashes) -> Option<usize> {
        self.delimiter_hashes
            .iter()
            .filter(|(hash, _)| set.hashes.contains(hash))
            .map(|(_, end)| *end)
            .max()
    }
}

/// Verifies `bytes` (with an optional detached signature) against the
/// trusted keys. Succeeds if at least one trusted key signed the whole
/// plugin, or, when `allow_partial`, a delimited prefix of it.
///
/// Which hash sets cover the content is decided from the hashes alone,
/// before any signature is checked; signatures in a set that covers nothing
/// are never verified, nor are signatures whose key id names no trusted key.
pub fn verify(
    bytes: &[u8],
    detached: Option<&[u8]>,
    trusted: &[PublicKey],
    allow_partial: bool,
) -> Result<Verified, SignatureError> {
    let signed = Signed::read(bytes, detached).map_err(SignatureError::Bad)?;
    let Some(data) = signed.data().map_err(SignatureError::Bad)? else {
        return Err(SignatureError::Unsigned);
    };
    if data
        .signed_hashes_set
        .iter()
        .all(|set| set.signatures.is_empty())
    {
        return Err(SignatureError::Unsigned);
    }

    // A set whose hashes are not this content's says nothing about this
    // plugin however well it is signed, so it costs no verification.
    let (full, prefix): (Vec<&SignedHashes>, Vec<&SignedHashes>) = data
        .signed_hashes_set
        .iter()
        .filter(|set| signed.covers_all(set) || signed.covers_prefix(set))
        .partition(|set| signed.covers_all(set));
    if full.is_empty() && prefix.is_empty() {
        return Err(SignatureError::Bad(
            "the plugin's content does not match any signed hash (it was modified after signing)"
                .into(),
        ));
    }

    let trusted: Vec<(KeyId, &PublicKey)> = trusted.iter().map(|key| (key.key_id(), key)).collect();
    let mut checked = Checked::default();
    let full_signers = checked.signers(&full, &trusted);
    if !full_signers.is_empty() {
        return Ok(Verified {
            signers: full_signers.into_iter().collect(),
            partial: false,
            covered_until: None,
        });
    }
    // Set by set, to know how far the trusted signatures reach.
    let mut partial_signers = BTreeSet::new();
    let mut covered_until = 0;
    for set in &prefix {
        let signers = checked.signers(&[*set], &trusted);
        if !signers.is_empty() {
            covered_until = covered_until.max(signed.prefix_end(set).unwrap_or(0));
            partial_signers.extend(signers);
        }
    }
    if !partial_signers.is_empty() {
        return if allow_partial {
            Ok(Verified {
                signers: partial_signers.into_iter().collect(),
                partial: true,
                covered_until: Some(covered_until),
            })
        } else {
            Err(SignatureError::Bad(
                "the trusted signature covers only part of the plugin \
                 (partial signatures are not allowed)"
                    .into(),
            ))
        };
    }
    if checked.trusted_key_failed {
        return Err(SignatureError::Bad(
            "a signature by a trusted key does not verify (the signature was modified)".into(),
        ));
    }
    Err(SignatureError::UntrustedKey {
        key_ids: checked.named_ids.into_iter().collect(),
    })
}

/// What checking the signatures of covering sets found besides signers.
#[derive(Default)]
struct Checked {
    /// Key ids named by signatures over this content, as hex.
    named_ids: BTreeSet<String>,
    /// Whether a signature naming a trusted key failed to verify.
    trusted_key_failed: bool,
}

impl Checked {
    /// The trusted keys whose signature of one of `sets` verifies.
    fn signers(
        &mut self,
        sets: &[&SignedHashes],
        trusted: &[(KeyId, &PublicKey)],
    ) -> BTreeSet<KeyId> {
        let mut signers = BTreeSet::new();
        for set in sets {
            let message = set.message();
            for entry in &set.signatures {
                if let Some(id) = &entry.key_id {
                    self.named_ids.insert(hex(id));
                }
                // A signature naming a key is checked with that key only
                // (with none if no trusted key has that id); one naming no
                // key may be by any trusted key. A key already proven to
                // have signed needs no second check.
                let candidates = trusted.iter().filter(|(id, _)| {
                    !signers.contains(id)
                        && entry
                            .key_id
                            .as_ref()
                            .is_none_or(|named| named.as_slice() == id.0)
                });
                let mut verified = Vec::new();
                for (id, key) in candidates {
                    if key.verifies(&message, &entry.signature) {
                        verified.push(*id);
                    } else {
                        // A signature naming this trusted key that does not
                        // verify was tampered with; one naming no key may
                        // simply be by another key.
                        self.trusted_key_failed |= entry.key_id.is_some();
                    }
                }
                signers.extend(verified);
            }
        }
        signers
    }
}

/// Lists the signatures in `bytes` (or the detached payload) without
/// verifying any of them.
pub fn list(bytes: &[u8], detached: Option<&[u8]>) -> Result<Vec<SignatureInfo>, String> {
    let signed = Signed::read(bytes, detached)?;
    let Some(data) = signed.data()? else {
        return Ok(Vec::new());
    };
    Ok(data
        .signed_hashes_set
        .iter()
        .flat_map(|set| {
            let full = signed.covers_all(set);
            set.signatures.iter().map(move |entry| SignatureInfo {
                key_id: entry.key_id.as_deref().map(hex),
                full,
            })
        })
        .collect())
}

/// The result of signing.
pub struct SignedPlugin {
    /// The plugin with the signature section first (unchanged content).
    pub embedded: Vec<u8>,
    /// The signature section's payload, for a detached `.sig` file.
    pub signature: Vec<u8>,
}

/// Signs every byte of `bytes` after any existing signature with `key`,
/// naming the key by its id. Signatures already present over the same
/// content are kept, so several signers can sign in turn.
pub fn sign(bytes: &[u8], key: &SecretKey) -> Result<SignedPlugin, String> {
    let signed = Signed::read(bytes, None)?;
    let mut data = signed.data()?.unwrap_or(SignatureData {
        signed_hashes_set: Vec::new(),
    });
    let hashes = vec![signed.full_hash];
    let key_id = key.public_key().key_id();
    let entry = SignatureEntry {
        key_id: Some(key_id.0.to_vec()),
        signature: key.sign(&signed_message(&hashes)).to_vec(),
    };
    match data
        .signed_hashes_set
        .iter_mut()
        .find(|set| set.hashes == hashes)
    {
        Some(set) => {
            set.signatures
                .retain(|existing| existing.key_id.as_deref() != Some(key_id.0.as_slice()));
            set.signatures.push(entry);
        }
        None => data.signed_hashes_set.push(SignedHashes {
            hashes,
            signatures: vec![entry],
        }),
    }
    let total: usize = data
        .signed_hashes_set
        .iter()
        .map(|set| set.signatures.len())
        .sum();
    if total > MAX_SIGNATURES_PER_SECTION {
        // No verifier would read the result.
        return Err(too_many_signatures());
    }
    if data.signed_hashes_set.len() > MAX_HASHES {
        return Err(format!(
            "the plugin already carries {MAX_HASHES} signed hash sets, the most a verifier reads"
        ));
    }
    let payload = data.encode();
    let mut embedded = bytes[..8].to_vec();
    embedded.extend(sections::encode_custom(SIGNATURE_SECTION, &payload));
    for section in &signed.content {
        embedded.extend_from_slice(&bytes[section.range.clone()]);
    }
    Ok(SignedPlugin {
        embedded,
        signature: payload,
    })
}

/// The content of a plugin without its embedded signature section: what a
/// digest of "the plugin" should cover so signing does not change it.
pub fn unsigned_content(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let signed = Signed::read(bytes, None)?;
    let mut out = bytes[..8].to_vec();
    for section in &signed.content {
        out.extend_from_slice(&bytes[section.range.clone()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::sections::{COMPONENT_HEADER, encode_custom};

    fn sample() -> Vec<u8> {
        let mut bytes = COMPONENT_HEADER.to_vec();
        bytes.extend(encode_custom("name", b"sample"));
        bytes.extend([1, 3, 1, 2, 3]);
        bytes
    }

    #[test]
    fn sign_then_verify() {
        let key = SecretKey::generate().unwrap();
        let signed = sign(&sample(), &key).unwrap();
        let verified = verify(&signed.embedded, None, &[key.public_key()], false).unwrap();
        assert_eq!(verified.signers, vec![key.public_key().key_id()]);
        // The detached payload verifies the original bytes.
        verify(
            &sample(),
            Some(&signed.signature),
            &[key.public_key()],
            false,
        )
        .unwrap();
        assert_eq!(unsigned_content(&signed.embedded).unwrap(), sample());
    }

    /// Signing never writes a section `verify` would refuse: neither a
    /// 65th hash set nor a version written as padded LEB128.
    #[test]
    fn signing_stays_within_what_verify_reads() {
        let data = SignatureData {
            signed_hashes_set: (0..MAX_HASHES as u8)
                .map(|i| SignedHashes {
                    hashes: vec![[i; 32]],
                    signatures: Vec::new(),
                })
                .collect(),
        };
        let mut full = COMPONENT_HEADER.to_vec();
        full.extend(encode_custom(SIGNATURE_SECTION, &data.encode()));
        full.extend_from_slice(&sample()[8..]);
        let err = sign(&full, &SecretKey::generate().unwrap()).err().unwrap();
        assert!(err.contains("signed hash sets"), "{err}");

        let mut padded = COMPONENT_HEADER.to_vec();
        padded.extend(encode_custom(SIGNATURE_SECTION, &[0x81, 0x00, 1, 1, 0]));
        let err = list(&padded, None).unwrap_err();
        assert!(err.contains("version byte 0x81"), "{err}");
    }

    #[test]
    fn unsigned_untrusted_and_tampered_are_told_apart() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        assert_eq!(
            verify(&sample(), None, &[key.public_key()], false),
            Err(SignatureError::Unsigned)
        );
        let signed = sign(&sample(), &other).unwrap().embedded;
        assert!(matches!(
            verify(&signed, None, &[key.public_key()], false),
            Err(SignatureError::UntrustedKey { key_ids }) if key_ids == [other.public_key().key_id().to_hex()]
        ));
        let mut tampered = sign(&sample(), &key).unwrap().embedded;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            verify(&tampered, None, &[key.public_key()], false),
            Err(SignatureError::Bad(msg)) if msg.contains("modified after signing")
        ));
    }

    /// Signature verifications attempted on this thread since the last call.
    fn verifications() -> usize {
        crate::artifact::keys::tests::VERIFICATIONS.with(|count| count.replace(0))
    }

    /// `sample()` carrying `sets` in its signature section.
    fn with_sets(sets: Vec<SignedHashes>) -> Vec<u8> {
        let payload = SignatureData {
            signed_hashes_set: sets,
        }
        .encode();
        let mut bytes = COMPONENT_HEADER.to_vec();
        bytes.extend(encode_custom(SIGNATURE_SECTION, &payload));
        bytes.extend_from_slice(&sample()[8..]);
        bytes
    }

    /// A set over a hash that is not the content's, "signed" by `key` with
    /// garbage.
    fn useless_set(key: &PublicKey, signatures: usize) -> SignedHashes {
        SignedHashes {
            hashes: vec![[0xab; 32]],
            signatures: (0..signatures)
                .map(|_| SignatureEntry {
                    key_id: Some(key.key_id().0.to_vec()),
                    signature: vec![0x55; 64],
                })
                .collect(),
        }
    }

    /// The signed hash sets `sign` writes for `sample()`.
    fn valid_sets(key: &SecretKey) -> Vec<SignedHashes> {
        SignatureData::parse(&sign(&sample(), key).unwrap().signature)
            .unwrap()
            .signed_hashes_set
    }

    #[test]
    fn more_signatures_than_the_bound_are_refused() {
        let key = SecretKey::generate().unwrap();
        let trusted = [key.public_key()];
        let over = MAX_SIGNATURES_PER_SECTION + 1;
        // In one set, and spread over two: the bound is per section.
        for sets in [
            vec![useless_set(&trusted[0], over)],
            vec![
                useless_set(&trusted[0], over / 2),
                useless_set(&trusted[0], over - over / 2),
            ],
        ] {
            let bytes = with_sets(sets);
            let result = verify(&bytes, None, &trusted, false);
            assert!(
                matches!(&result, Err(SignatureError::Bad(msg)) if msg.contains("too many signatures")),
                "{result:?}"
            );
            assert!(list(&bytes, None).is_err());
            assert_eq!(verifications(), 0);
        }
        // Exactly the bound is read.
        let bytes = with_sets(vec![useless_set(&trusted[0], MAX_SIGNATURES_PER_SECTION)]);
        assert_eq!(
            list(&bytes, None).unwrap().len(),
            MAX_SIGNATURES_PER_SECTION
        );
        // And signing does not write a section no verifier would read.
        let err = sign(&bytes, &key).err().expect("a full section is refused");
        assert!(err.contains("too many signatures"), "{err}");
    }

    #[test]
    fn a_set_that_covers_nothing_is_never_verified() {
        let key = SecretKey::generate().unwrap();
        let trusted = [key.public_key()];
        verifications();
        // It names a trusted key and its signature is garbage, but its hash
        // is not the content's: the verdict is about the content, and no
        // signature was checked.
        let bytes = with_sets(vec![useless_set(&trusted[0], 1)]);
        let result = verify(&bytes, None, &trusted, false);
        assert!(
            matches!(&result, Err(SignatureError::Bad(msg)) if msg.contains("does not match any signed hash")),
            "{result:?}"
        );
        assert_eq!(verifications(), 0);

        // Next to a valid signature by an untrusted key, the useless set does
        // not turn the verdict into "a trusted key's signature was modified".
        let stranger = SecretKey::generate().unwrap();
        let mut sets = vec![useless_set(&trusted[0], 1)];
        sets.extend(valid_sets(&stranger));
        let result = verify(&with_sets(sets), None, &trusted, false);
        assert_eq!(
            result,
            Err(SignatureError::UntrustedKey {
                key_ids: vec![stranger.public_key().key_id().to_hex()]
            })
        );
        // The stranger's signature names a key nobody trusts: not checked.
        assert_eq!(verifications(), 0);
    }

    #[test]
    fn a_valid_signature_verifies_alongside_many_useless_sets() {
        let key = SecretKey::generate().unwrap();
        let trusted = [key.public_key()];
        let mut sets: Vec<SignedHashes> = (1..MAX_SIGNATURES_PER_SECTION)
            .map(|_| useless_set(&trusted[0], 1))
            .collect();
        sets.extend(valid_sets(&key));
        verifications();
        let verified = verify(&with_sets(sets), None, &trusted, false).unwrap();
        assert_eq!(verified.signers, vec![trusted[0].key_id()]);
        assert!(!verified.partial);
        assert_eq!(verifications(), 1, "only the covering signature is checked");
    }

    #[test]
    fn two_signers_both_verify() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        let once = sign(&sample(), &a).unwrap().embedded;
        let twice = sign(&once, &b).unwrap().embedded;
        let verified = verify(&twice, None, &[a.public_key(), b.public_key()], false).unwrap();
        assert_eq!(verified.signers.len(), 2);
        verify(&twice, None, &[b.public_key()], false).unwrap();
        assert_eq!(list(&twice, None).unwrap().len(), 2);
    }
}
