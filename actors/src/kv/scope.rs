//! Who may share a cached prefix with whom.

use std::fmt;

use crate::ids::Owner;

/// The set of sessions that may share blocks with each other.
///
/// Blocks are shared only inside one scope: the scope is part of every
/// block's hash *and* is compared on lookup. A cache hit across tenants
/// would be a timing side channel (a faster first token tells one tenant
/// that another sent the same prompt), so the default scope is the owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ShareScope {
    /// Share only between sessions of the same owner (the default).
    Owner(Owner),
    /// Share between every session the application gives this salt, across
    /// owners: for a public system prompt that every tenant may reuse. The
    /// application chooses who learns a salt; anyone with it can probe the cache.
    Salt(Salt),
}

impl ShareScope {
    /// Bytes that identify the scope inside a block hash: a tag that keeps
    /// an owner named like a salt apart from that salt, then the value.
    pub(crate) fn tag_and_bytes(&self) -> (u8, &[u8]) {
        match self {
            ShareScope::Owner(owner) => (1, owner.as_str().as_bytes()),
            ShareScope::Salt(salt) => (2, &salt.0),
        }
    }
}

/// A 32-byte sharing salt chosen by the application (for instance an HMAC of
/// a prompt-template name under the application's key). Redacted in `Debug`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Salt(pub [u8; 32]);

impl fmt::Debug for Salt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Salt(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_salt_tags_differ_even_for_equal_bytes() {
        let owner = ShareScope::Owner(Owner::new(String::from_utf8(vec![b'a'; 32]).unwrap()));
        let salt = ShareScope::Salt(Salt([b'a'; 32]));
        assert_eq!(owner.tag_and_bytes().1, salt.tag_and_bytes().1);
        assert_ne!(owner.tag_and_bytes().0, salt.tag_and_bytes().0);
    }

    #[test]
    fn salt_debug_is_redacted() {
        assert_eq!(format!("{:?}", Salt([7; 32])), "Salt(<redacted>)");
    }
}
