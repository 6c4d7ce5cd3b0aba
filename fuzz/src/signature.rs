//! The signature section: parsing and verifying on any bytes (`signature`),
//! and signing arbitrary components then changing one byte (`sign`).

use arbitrary::{Arbitrary, Unstructured};
use capsule_host::artifact::inspect;
use capsule_host::artifact::sections::{self, COMPONENT_HEADER, MODULE_HEADER};
use capsule_host::artifact::signature::{self, DELIMITER_SECTION, SIGNATURE_SECTION, Verified};

use crate::Target;
use crate::fixtures::{self, positions, trusted, trusted_secret};

/// `signature`: [`signature::verify`] and [`signature::list`] on any bytes.
pub const TARGET: Target = Target {
    name: "signature",
    about: "verify and list on any file (first byte: allow partial signatures). A file that \
            verifies names the trusted key, lists its signatures, and stops verifying when any \
            covered byte changes",
    check,
    seeds: signed_samples,
};

/// `sign`: [`signature::sign`] on structured components, then one-byte
/// changes.
pub const SIGN_TARGET: Target = Target {
    name: "sign",
    about: "sign arbitrary components (embedded and detached, one or two signers): what is \
            signed verifies, the unsigned content is unchanged, and no single changed byte of \
            the covered content verifies",
    check: check_sign,
    seeds: structured_seeds,
};

/// Where the covered content starts: after the embedded signature section,
/// if the file has one.
fn content_start(file: &[u8]) -> usize {
    match sections::split(file) {
        Ok(all) => match all.first().and_then(|first| first.custom()) {
            Some((SIGNATURE_SECTION, _)) => all[0].range.end,
            _ => 8,
        },
        Err(_) => 8,
    }
}

/// Every single-byte change of a covered byte, at a sample of positions,
/// must stop `file` from verifying — except a header turned into the other
/// WebAssembly header, which the signature does not cover (as in
/// wasmsign2) and which the loader refuses on its own when it is a module.
fn assert_tamper_evident(
    file: &[u8],
    detached: Option<&[u8]>,
    verified: &Verified,
    allow_partial: bool,
) {
    let start = if detached.is_some() {
        8
    } else {
        content_start(file)
    };
    let end = verified.covered_until.unwrap_or(file.len());
    let mut at = positions(start..end, file, 12);
    at.extend(positions(0..8, file, 3));
    for position in at {
        for flip in [0x01, 0x80, 0xff] {
            let mut tampered = file.to_vec();
            tampered[position] ^= flip;
            let result = signature::verify(&tampered, detached, &[trusted()], allow_partial);
            if position < 8 {
                if result.is_ok() {
                    let header = &tampered[..8];
                    assert!(
                        header == COMPONENT_HEADER || header == MODULE_HEADER,
                        "a changed header byte {position} verified: {header:02x?}"
                    );
                    if header == MODULE_HEADER {
                        assert!(inspect::check_header(&tampered).is_err());
                    }
                }
                continue;
            }
            // A partial signature may still cover a shorter prefix (up to an
            // earlier delimiter), never the changed byte.
            let still_claimed = result
                .as_ref()
                .is_ok_and(|v| v.covered_until.is_none_or(|end| end > position));
            assert!(
                !still_claimed,
                "changing covered byte {position} (of {}) by {flip:#04x} still verifies: {result:?}",
                file.len()
            );
        }
    }
}

fn check(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let allow_partial = flags & 1 != 0;
    let verified = signature::verify(file, None, &[trusted()], allow_partial);
    let listed = signature::list(file, None);
    let Ok(verified) = verified else {
        return;
    };
    assert_eq!(verified.signers, [trusted().key_id()]);
    assert_eq!(verified.partial, verified.covered_until.is_some());
    assert!(allow_partial || !verified.partial);
    let listed = listed.expect("a file that verifies lists its signatures");
    assert!(!listed.is_empty());
    if !verified.partial {
        assert!(listed.iter().any(|info| info.full));
        // The content without the signature is exactly the bytes it covers.
        let unsigned = signature::unsigned_content(file).expect("a verified file has content");
        assert_eq!(&unsigned[8..], &file[content_start(file)..]);
    }
    assert_tamper_evident(file, None, &verified, allow_partial);
}

/// A section of a component the `sign` target builds.
#[derive(Arbitrary, Debug)]
enum Piece {
    Custom { name: String, data: Vec<u8> },
    Other { id: u8, payload: Vec<u8> },
    Delimiter,
}

#[derive(Arbitrary, Debug)]
struct Signing {
    module: bool,
    pieces: Vec<Piece>,
    second_signer: bool,
}

fn check_sign(data: &[u8]) {
    let Ok(input) = Signing::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let framed: Vec<Vec<u8>> = input
        .pieces
        .iter()
        .take(16)
        .map(|piece| match piece {
            Piece::Custom { name, data } => sections::encode_custom(name, data),
            Piece::Other { id, payload } => fixtures::section((*id).max(1), payload),
            Piece::Delimiter => sections::encode_custom(DELIMITER_SECTION, &[0; 16]),
        })
        .collect();
    let file = if input.module {
        fixtures::module(&framed)
    } else {
        fixtures::component(&framed)
    };
    let starts_signed = matches!(
        input.pieces.first(),
        Some(Piece::Custom { name, .. }) if name == SIGNATURE_SECTION
    );
    let signed = match signature::sign(&file, &trusted_secret()) {
        Ok(signed) => signed,
        Err(err) => {
            // Only a first section that already claims to be a signature
            // (and is not one) can stop signing.
            assert!(starts_signed, "signing failed: {err}");
            return;
        }
    };
    let verified = signature::verify(&signed.embedded, None, &[trusted()], false)
        .unwrap_or_else(|err| panic!("a file just signed does not verify: {err}"));
    assert_eq!(verified.signers, [trusted().key_id()]);
    assert!(!verified.partial);
    let content = signature::unsigned_content(&signed.embedded).unwrap();
    if !starts_signed {
        assert_eq!(content, file, "signing changed the content");
    }
    // The detached payload verifies the content as it is.
    let detached = signature::verify(&content, Some(&signed.signature), &[trusted()], false)
        .unwrap_or_else(|err| panic!("a detached signature does not verify: {err}"));
    assert_eq!(detached.signers, verified.signers);
    assert_tamper_evident(&signed.embedded, None, &verified, false);
    assert_tamper_evident(&content, Some(&signed.signature), &detached, false);

    if input.second_signer {
        let other = fixtures::other_secret();
        let twice = signature::sign(&signed.embedded, &other).expect("a second signer signs");
        let both = signature::verify(
            &twice.embedded,
            None,
            &[trusted(), other.public_key()],
            false,
        )
        .expect("both signatures verify");
        let mut expected = vec![trusted().key_id(), other.public_key().key_id()];
        expected.sort();
        assert_eq!(both.signers, expected);
        // Trusting only the first signer still verifies.
        signature::verify(&twice.embedded, None, &[trusted()], false)
            .expect("the first signature still verifies");
    }
}

/// The sample components, each signed by the trusted test key and by
/// another key, each with a flags byte in front; and partially signed ones
/// with partial signatures allowed.
pub fn signed_samples() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for sample in fixtures::samples() {
        for key in [trusted_secret(), fixtures::other_secret()] {
            let signed = signature::sign(&sample, &key)
                .expect("samples sign")
                .embedded;
            seeds.push([&[0u8][..], &signed].concat());
        }
        if let Some(partial) = partially_signed(&sample) {
            seeds.push([&[1u8][..], &partial].concat());
        }
    }
    seeds
}

/// `sample` with a signature of the trusted key over its sections up to
/// its first delimiter, and one more section appended: the signature covers
/// a prefix. Written out by hand (wasmsign2's `sign_multi` would make the
/// same, with random delimiters, so seeds would change on every run); `None`
/// for a sample without a delimiter.
fn partially_signed(sample: &[u8]) -> Option<Vec<u8>> {
    use ed25519_dalek::Signer;
    use sha2::{Digest, Sha256};

    let delimiter_end = sections::split(sample)
        .ok()?
        .iter()
        .find(|section| {
            section
                .custom()
                .is_some_and(|(name, _)| name == DELIMITER_SECTION)
        })?
        .range
        .end;
    let hash: [u8; 32] = Sha256::digest(&sample[8..delimiter_end]).into();
    let mut message = b"wasmsig\x01\x01\x01".to_vec();
    message.extend_from_slice(&hash);
    let signature = fixtures::trusted_signing_key().sign(&message).to_bytes();

    let mut entry = Vec::new();
    sections::write_bytes(&mut entry, &trusted().key_id().0);
    entry.push(0x01);
    sections::write_bytes(&mut entry, &signature);
    let mut set = vec![1];
    set.extend_from_slice(&hash);
    set.push(1);
    sections::write_bytes(&mut set, &entry);
    let mut payload = vec![1, 1, 1, 1];
    sections::write_bytes(&mut payload, &set);

    let mut file = sample[..8].to_vec();
    file.extend(sections::encode_custom(SIGNATURE_SECTION, &payload));
    file.extend_from_slice(&sample[8..]);
    file.extend(sections::encode_custom("appended-later", b"unsigned"));
    Some(file)
}

/// The differential target's seeds: the fully signed samples with embedded
/// signatures, and with detached ones (flag bit 0, then the signature's
/// length in two bytes).
pub fn differential_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = signed_samples()
        .into_iter()
        .filter(|seed| seed[0] == 0)
        .collect();
    for sample in fixtures::samples() {
        let signed = signature::sign(&sample, &trusted_secret()).expect("samples sign");
        let len = u16::try_from(signed.signature.len()).expect("a small signature");
        let mut seed = vec![1];
        seed.extend(len.to_le_bytes());
        seed.extend(&signed.signature);
        seed.extend(&sample);
        seeds.push(seed);
    }
    seeds
}

/// Seeds for targets that build their input with `arbitrary`: any bytes
/// make some input, and these make a few different ones.
pub fn structured_seeds() -> Vec<Vec<u8>> {
    vec![
        vec![0; 64],
        (0..=255).collect(),
        (0..=255).rev().cycle().take(1024).collect(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_seeds_verify_partially_and_full_ones_fully() {
        let mut partial = 0;
        for seed in signed_samples() {
            let allow_partial = seed[0] & 1 != 0;
            match signature::verify(&seed[1..], None, &[trusted()], allow_partial) {
                Ok(verified) => {
                    assert_eq!(verified.partial, allow_partial);
                    partial += usize::from(verified.partial);
                }
                // Signed by the other test key.
                Err(err) => assert!(err.to_string().contains("untrusted"), "{err}"),
            }
        }
        assert!(partial > 0);
    }
}
