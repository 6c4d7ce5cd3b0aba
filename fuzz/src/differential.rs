//! `differential`: Capsule's verifier against the `wasmsign2` crate on the
//! same (mutated) signed files. Both read the WebAssembly tool-conventions
//! signature format, so they must accept and refuse the same files, except
//! where Capsule differs on purpose — each difference named below, and any
//! other disagreement a finding.

use capsule_host::artifact::sections;
use capsule_host::artifact::signature::{self, SIGNATURE_SECTION, SignatureError};

use crate::Target;
use crate::fixtures::trusted;

/// The target.
pub const TARGET: Target = Target {
    name: "differential",
    about: "Capsule's verify against wasmsign2's on the same file (first byte: bit 0, a \
            detached signature follows, its length in two bytes): they agree, with the same \
            signer, except where Capsule differs on purpose (docs/fuzzing.md lists each case)",
    check,
    seeds: crate::signature::differential_seeds,
};

/// Where Capsule refuses what wasmsign2 accepts, on purpose: Capsule's
/// error names a malformation wasmsign2 reads past, and why Capsule does not.
const STRICTER: &[(&str, &str)] = &[
    (
        "the file is truncated or corrupt",
        "the sections after the signature do not frame; wasmsign2 hashes them as raw bytes, \
         Capsule must read them as sections to load them anyway",
    ),
    (
        "trailing bytes",
        "bytes after the signatures, or inside a hash set; wasmsign2 ignores them, Capsule \
         refuses a section it cannot read whole",
    ),
    (
        "too many",
        "more than 64 signatures in a section; wasmsign2 reads up to 256 per hash set, Capsule \
         bounds the Ed25519 verifications one file can cost",
    ),
    (
        "truncated",
        "a signature entry cut short, or a LEB128 value past 32 bits; wasmsign2 skips the entry \
         or drops the extra bits, Capsule refuses the section",
    ),
];

/// Whether Capsule accepts, on purpose, what wasmsign2 refuses.
fn lenient_on_purpose(file: &[u8], detached: Option<&[u8]>, theirs: &wasmsign2::WSError) -> bool {
    // With a detached signature, an embedded signature section is still
    // not signed content for Capsule (so signing and verifying agree
    // whichever way the signature travels); wasmsign2 hashes it.
    let embedded = matches!(
        sections::split(file).ok().and_then(|all| all
            .first()
            .and_then(|s| s.custom())
            .map(|(n, _)| n == SIGNATURE_SECTION)),
        Some(true)
    );
    // An Ed25519 entry whose signature is not 64 bytes aborts wasmsign2's
    // whole verification; Capsule skips that entry and checks the others, so
    // one corrupt co-signature cannot void a valid one.
    let bad_entry = matches!(theirs, wasmsign2::WSError::CryptoError(_));
    (detached.is_some() && embedded) || bad_entry
}

fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (file, detached) = if flags & 1 != 0 && rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let rest = &rest[2..];
        let len = len.min(rest.len());
        (&rest[len..], Some(&rest[..len]))
    } else {
        (rest, None)
    };

    let ours = signature::verify(file, detached, &[trusted()], false);
    let theirs_key = wasmsign2::PublicKey::from_bytes(&trusted().to_raw())
        .expect("wasmsign2 reads the raw key")
        .attach_default_key_id();
    let theirs = theirs_key.verify(&mut &file[..], detached);

    match (&ours, &theirs) {
        (Ok(verified), Ok(())) => {
            assert_eq!(verified.signers, [trusted().key_id()]);
            assert!(!verified.partial);
        }
        (Err(_), Err(_)) => {}
        (Ok(verified), Err(err)) => assert!(
            lenient_on_purpose(file, detached, err),
            "Capsule accepts ({verified:?}) what wasmsign2 refuses ({err})"
        ),
        (Err(err), Ok(())) => {
            let SignatureError::Bad(message) = err else {
                panic!("wasmsign2 accepts what Capsule refuses ({err})");
            };
            assert!(
                STRICTER.iter().any(|(says, _)| message.contains(says)),
                "wasmsign2 accepts what Capsule refuses ({err})"
            );
        }
    }
}
