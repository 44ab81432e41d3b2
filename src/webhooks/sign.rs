//! The signature primitives the platforms use: HMAC-SHA256 (Vapi, Retell), HMAC-SHA1 (Twilio),
//! and comparisons whose time does not depend on where the inputs first differ.

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

/// HMAC-SHA256 of the concatenated `parts`.
pub(super) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA1 of the concatenated `parts`.
pub(super) fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Equal, in time that depends only on the lengths.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A presented hex digest equals `expected` (any case).
pub(super) fn same_hex(presented: &str, expected: &[u8]) -> bool {
    match hex::decode(presented.trim()) {
        Ok(bytes) => same(&bytes, expected),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 2202 test case 2.
        assert_eq!(
            hex::encode(hmac_sha1(b"Jefe", &[b"what do ya want for nothing?"])),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert!(same_hex("5BDC", &[0x5b, 0xdc]));
        assert!(!same_hex("5bdd", &[0x5b, 0xdc]));
        assert!(!same_hex("zz", &[0x5b]));
        assert!(!same(b"a", b"ab"));
    }
}
