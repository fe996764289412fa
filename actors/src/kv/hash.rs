//! The hash chain that names a full block by everything that led to it.

use std::fmt;

use sha2::{Digest, Sha256};

use super::ids::TokenId;
use super::scope::ShareScope;

/// The identity of a full block's content: SHA-256 over the parent block's
/// hash, the sharing scope and the block's token ids.
///
/// Because the parent's hash is inside, equal hashes mean equal *prefixes*,
/// not just equal blocks: KV depends on every earlier token. SHA-256 rather
/// than a fast hash because a collision, accidental or forged, would hand
/// one session another's KV.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash([u8; 32]);

/// Separates this use of SHA-256 from any other; bump the version if the
/// encoding below changes.
const DOMAIN: &[u8] = b"sessionbus.kv.block.v1\0";

impl BlockHash {
    /// The hash of the block holding `tokens` after the block `parent`
    /// (`None` for a table's first block), in `scope`.
    ///
    /// Every variable-length field is length-prefixed, so no two different
    /// inputs encode to the same bytes.
    pub fn chain(parent: Option<&BlockHash>, scope: &ShareScope, tokens: &[TokenId]) -> BlockHash {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        match parent {
            Some(p) => {
                h.update([1]);
                h.update(p.0);
            }
            None => h.update([0]),
        }
        let (tag, bytes) = scope.tag_and_bytes();
        h.update([tag]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
        h.update((tokens.len() as u64).to_le_bytes());
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        BlockHash(h.finalize().into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The first 8 bytes in hex: enough to tell blocks apart in a log line.
impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockHash(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Owner;
    use crate::kv::scope::Salt;

    fn owner(s: &str) -> ShareScope {
        ShareScope::Owner(Owner::new(s))
    }

    #[test]
    fn same_inputs_same_hash() {
        let a = BlockHash::chain(None, &owner("a"), &[1, 2, 3]);
        assert_eq!(a, BlockHash::chain(None, &owner("a"), &[1, 2, 3]));
    }

    #[test]
    fn scope_parent_and_tokens_all_matter() {
        let base = BlockHash::chain(None, &owner("a"), &[1, 2]);
        assert_ne!(base, BlockHash::chain(None, &owner("b"), &[1, 2]));
        assert_ne!(
            base,
            BlockHash::chain(None, &ShareScope::Salt(Salt([0; 32])), &[1, 2])
        );
        assert_ne!(base, BlockHash::chain(None, &owner("a"), &[2, 1]));
        assert_ne!(base, BlockHash::chain(Some(&base), &owner("a"), &[1, 2]));
    }

    #[test]
    fn a_chain_names_the_whole_prefix() {
        let s = owner("a");
        let first_x = BlockHash::chain(None, &s, &[1]);
        let first_y = BlockHash::chain(None, &s, &[9]);
        assert_ne!(
            BlockHash::chain(Some(&first_x), &s, &[2]),
            BlockHash::chain(Some(&first_y), &s, &[2])
        );
    }

    #[test]
    fn length_prefix_keeps_owner_bytes_and_tokens_apart() {
        // Owner "a" + tokens [] must differ from owner "" + tokens that encode "a".
        let a = BlockHash::chain(None, &owner("a"), &[]);
        let b = BlockHash::chain(None, &owner(""), &[u32::from(b'a')]);
        assert_ne!(a, b);
    }

    #[test]
    fn debug_shows_a_short_prefix() {
        let d = format!("{:?}", BlockHash::chain(None, &owner("a"), &[1]));
        assert!(d.starts_with("BlockHash(") && d.len() < 32, "{d}");
    }
}
