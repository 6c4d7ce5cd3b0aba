//! `differential`: Capsule's verifier against the `wasmsign2` crate on the
//! same (mutated) signed files. Both read the WebAssembly tool-conventions
//! signature format, so they must accept and refuse the same files, except
//! where Capsule is deliberately stricter, each case named below.

use capsule_host::PublicKey;
use capsule_host::artifact::sections;
use capsule_host::artifact::signature::{self, SignatureError};

use crate::Target;
use crate::fixtures::trusted;

/// The target.
pub const TARGET: Target = Target {
    name: "differential",
    about: "Capsule's verify against wasmsign2's on the same file (first byte: detached \
            signature, weak trusted key): they agree, except where Capsule is stricter on \
            purpose (weak keys, malformed section framing)",
    check,
    seeds: crate::signature::signed_samples,
};

/// An Ed25519 point of small order (the identity): a weak key that
/// "verifies" signatures nobody made.
const WEAK_KEY: [u8; 32] = {
    let mut key = [0; 32];
    key[0] = 1;
    key
};

/// Why Capsule refuses a file wasmsign2 accepts, when it does so on purpose.
fn stricter_on_purpose(file: &[u8], detached: Option<&[u8]>) -> Option<&'static str> {
    // wasmsign2 hashes whatever follows the signature section as raw bytes;
    // Capsule first reads them as sections, and refuses a file whose
    // framing is broken (the loader would refuse it anyway).
    let framing_ok = sections::split(file).is_ok();
    if !framing_ok {
        return Some("the sections after the signature do not frame");
    }
    let _ = detached;
    None
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

    if flags & 2 != 0 {
        // Capsule refuses a weak key outright, so it can never be trusted;
        // wasmsign2 takes it (and would accept signatures forged for it).
        let mut raw = vec![0x01];
        raw.extend_from_slice(&WEAK_KEY);
        let err = PublicKey::from_any(&raw).expect_err("Capsule refuses a weak key");
        assert!(err.to_string().contains("weak"), "{err}");
        return;
    }

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
        (Ok(verified), Err(err)) => {
            panic!("Capsule accepts ({verified:?}) what wasmsign2 refuses ({err})")
        }
        (Err(err), Ok(())) => {
            let Some(_why) = stricter_on_purpose(file, detached) else {
                panic!("wasmsign2 accepts what Capsule refuses ({err})");
            };
            assert!(
                matches!(err, SignatureError::Bad(_)),
                "a stricter refusal is a bad signature: {err}"
            );
        }
    }
}
