//! `keys`: public and secret key files in every format Capsule reads (raw
//! wasmsign2, PEM, OpenSSH).

use capsule_host::artifact::signature;
use capsule_host::{PublicKey, SecretKey};

use crate::Target;
use crate::fixtures;

/// The target.
pub const TARGET: Target = Target {
    name: "keys",
    about: "read any bytes as a public and as a secret key: an accepted key re-encodes (raw, \
            PEM) to the same key and id, is never weak, and a secret key signs what its \
            public half verifies",
    check,
    seeds: || {
        let secret = fixtures::trusted_secret();
        let public = secret.public_key();
        let raw = public.to_raw();
        let blob = [
            &11u32.to_be_bytes()[..],
            b"ssh-ed25519",
            &32u32.to_be_bytes(),
            &raw[1..],
        ]
        .concat();
        vec![
            raw,
            public.to_pem().into_bytes(),
            format!("ssh-ed25519 {} test@capsule", base64(&blob)).into_bytes(),
            secret.to_raw(),
            secret.to_pem().into_bytes(),
        ]
    },
};

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn same(a: &PublicKey, b: &PublicKey) -> bool {
    a.to_raw() == b.to_raw() && a.key_id() == b.key_id()
}

fn check(data: &[u8]) {
    if let Ok(key) = PublicKey::from_any(data) {
        let raw = key.to_raw();
        assert_eq!(raw.len(), 33);
        let point: [u8; 32] = raw[1..].try_into().unwrap();
        let decoded = ed25519_dalek::VerifyingKey::from_bytes(&point).expect("a valid point");
        assert!(!decoded.is_weak(), "a weak key was accepted");
        assert!(same(&PublicKey::from_any(&raw).unwrap(), &key));
        assert!(same(
            &PublicKey::from_any(key.to_pem().as_bytes()).unwrap(),
            &key
        ));
    }
    if let Ok(secret) = SecretKey::from_any(data) {
        let public = secret.public_key();
        assert!(same(
            &SecretKey::from_any(&secret.to_raw()).unwrap().public_key(),
            &public
        ));
        assert!(same(
            &SecretKey::from_any(secret.to_pem().as_bytes())
                .unwrap()
                .public_key(),
            &public
        ));
        let sample = fixtures::component(&[]);
        let signed = signature::sign(&sample, &secret).expect("an accepted key signs");
        let verified =
            signature::verify(&signed.embedded, None, std::slice::from_ref(&public), false)
                .expect("what a key signs, its public half verifies");
        assert_eq!(verified.signers, [public.key_id()]);
    }
}
