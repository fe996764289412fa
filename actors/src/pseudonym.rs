//! Pseudonyms: who owns a session, without saying who.
//!
//! Ground rules: an owner's id and a client's IP address never reach a log
//! line or an audit record in clear. What goes out instead is a keyed hash
//! (HMAC-SHA256, cut to 128 bits): the same owner always gives the same
//! pseudonym under the same key, so a log pipeline can group by it, but
//! nobody without the key can tell who it is, nor test a guess.
//!
//! The key comes from the application (the runtime's `[audit]` key). Without
//! one, each process draws a random key, so pseudonyms are then only stable
//! within one process.

use std::fmt;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{Caller, Owner};

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Turns identities into stable keyed-hash pseudonyms.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: Hmac<Sha256>,
}

/// A key shorter than [`MIN_KEY_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a pseudonym key needs at least {min} bytes, got {got}")]
pub struct KeyTooShort {
    /// The key's length.
    pub got: usize,
    /// The minimum.
    pub min: usize,
}

impl Pseudonymizer {
    /// A pseudonymizer keyed with `key` (at least [`MIN_KEY_BYTES`] bytes).
    pub fn new(key: &[u8]) -> Result<Self, KeyTooShort> {
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort {
                got: key.len(),
                min: MIN_KEY_BYTES,
            });
        }
        let key = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        Ok(Pseudonymizer { key })
    }

    /// A pseudonymizer with a random key for this process only: pseudonyms
    /// are stable within the process and mean nothing outside it.
    pub fn random() -> Self {
        let key: [u8; 32] = rand::random();
        Pseudonymizer::new(&key).expect("32 bytes is long enough")
    }

    /// The pseudonym of `value` in `domain` ("owner", "ip", …): the domain
    /// keeps an owner named like an IP address from sharing its pseudonym.
    fn hash(&self, domain: &str, value: &[u8]) -> String {
        let mut mac = self.key.clone();
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(2 + 32);
        out.push_str("p:");
        for byte in &digest[..16] {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        }
        out
    }

    /// The owner's pseudonym: `p:` and 32 hex digits.
    pub fn owner(&self, owner: &Owner) -> String {
        self.hash("owner", owner.as_str().as_bytes())
    }

    /// A caller's pseudonym: a user as its owner pseudonym, an operator in its own domain.
    pub fn caller(&self, caller: &Caller) -> String {
        match caller {
            Caller::User(owner) => self.owner(owner),
            Caller::Operator(name) => self.hash("operator", name.as_bytes()),
        }
    }

    /// A client IP address's pseudonym (IPv4 and IPv4-mapped IPv6 agree).
    pub fn ip(&self, ip: IpAddr) -> String {
        self.hash("ip", ip.to_canonical().to_string().as_bytes())
    }

    /// The owner's pseudonym, computed only if it is formatted: for log
    /// fields, so a disabled log line costs no hash.
    pub fn display_owner<'a>(&'a self, owner: &'a Owner) -> impl fmt::Display + 'a {
        Lazy(move || self.owner(owner))
    }

    /// A caller's pseudonym, computed only if it is formatted.
    pub fn display_caller<'a>(&'a self, caller: &'a Caller) -> impl fmt::Display + 'a {
        Lazy(move || self.caller(caller))
    }
}

struct Lazy<F>(F);

impl<F: Fn() -> String> fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&(self.0)())
    }
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer(<key>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_owner_under_the_same_key_gets_the_same_pseudonym() {
        let key = [7u8; 32];
        let a = Pseudonymizer::new(&key).unwrap();
        let b = Pseudonymizer::new(&key).unwrap();
        let alice = Owner::new("alice");
        assert_eq!(a.owner(&alice), b.owner(&alice));
        assert_ne!(a.owner(&alice), a.owner(&Owner::new("bob")));
        assert!(!a.owner(&alice).contains("alice"));
        assert_eq!(a.owner(&alice).len(), 34);
    }

    #[test]
    fn another_key_gives_another_pseudonym() {
        let alice = Owner::new("alice");
        let a = Pseudonymizer::new(&[1u8; 32]).unwrap();
        let b = Pseudonymizer::new(&[2u8; 32]).unwrap();
        assert_ne!(a.owner(&alice), b.owner(&alice));
    }

    #[test]
    fn domains_keep_owners_ips_and_operators_apart() {
        let p = Pseudonymizer::new(&[3u8; 32]).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_ne!(p.owner(&Owner::new("10.0.0.1")), p.ip(ip));
        assert_ne!(
            p.caller(&Caller::Operator("alice".into())),
            p.owner(&Owner::new("alice"))
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(p.ip(ip), p.ip(mapped));
    }

    #[test]
    fn a_short_key_is_refused_with_its_length() {
        assert_eq!(
            Pseudonymizer::new(&[0u8; 31]).unwrap_err(),
            KeyTooShort { got: 31, min: 32 }
        );
    }

    #[test]
    fn the_lazy_form_formats_to_the_same_pseudonym() {
        let p = Pseudonymizer::new(&[4u8; 32]).unwrap();
        let alice = Owner::new("alice");
        assert_eq!(p.display_owner(&alice).to_string(), p.owner(&alice));
    }
}
