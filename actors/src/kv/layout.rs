//! The shape of KV memory the application's model needs.

use serde::{Deserialize, Serialize};

use super::error::KvConfigError;

/// How many tokens a block holds and how many bytes one token's KV takes
/// (all layers, keys and values: the application computes it from its model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvLayout {
    /// Tokens per block. vLLM uses 16; larger blocks mean fewer table
    /// entries but coarser sharing (only full blocks are shared).
    pub tokens_per_block: u32,
    /// Bytes of KV per token.
    pub bytes_per_token: u64,
}

impl KvLayout {
    /// Bytes of one block. Call [`validate`](Self::validate) first: this
    /// saturates instead of overflowing.
    pub fn block_bytes(&self) -> u64 {
        u64::from(self.tokens_per_block).saturating_mul(self.bytes_per_token)
    }

    /// Refuses a layout that cannot work on a device whose largest buffer is
    /// `max_buffer_size` bytes, naming the field.
    pub fn validate(&self, max_buffer_size: u64) -> Result<(), KvConfigError> {
        if self.tokens_per_block == 0 {
            return Err(KvConfigError::Zero {
                field: "kv.layout.tokens_per_block",
            });
        }
        if self.bytes_per_token == 0 {
            return Err(KvConfigError::Zero {
                field: "kv.layout.bytes_per_token",
            });
        }
        let block = u64::from(self.tokens_per_block)
            .checked_mul(self.bytes_per_token)
            .ok_or(KvConfigError::Overflow {
                field: "kv.layout.bytes_per_token",
            })?;
        if block > max_buffer_size {
            return Err(KvConfigError::TooLarge {
                field: "kv.layout",
                bytes: block,
                max_buffer_size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(tokens_per_block: u32, bytes_per_token: u64) -> KvLayout {
        KvLayout {
            tokens_per_block,
            bytes_per_token,
        }
    }

    #[test]
    fn block_bytes_multiplies() {
        assert_eq!(layout(16, 1024).block_bytes(), 16 * 1024);
        assert!(layout(16, 1024).validate(1 << 20).is_ok());
    }

    #[test]
    fn zero_fields_are_refused_by_name() {
        let e = layout(0, 8).validate(u64::MAX).unwrap_err();
        assert_eq!(e.field(), "kv.layout.tokens_per_block");
        let e = layout(8, 0).validate(u64::MAX).unwrap_err();
        assert_eq!(e.field(), "kv.layout.bytes_per_token");
    }

    #[test]
    fn overflow_is_refused() {
        let e = layout(u32::MAX, u64::MAX).validate(u64::MAX).unwrap_err();
        assert!(matches!(e, KvConfigError::Overflow { .. }), "{e}");
    }

    #[test]
    fn a_block_larger_than_the_largest_buffer_is_refused() {
        let e = layout(16, 1024).validate(16 * 1024 - 1).unwrap_err();
        assert!(
            matches!(e, KvConfigError::TooLarge { bytes: 16384, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("kv.layout"));
    }

    #[test]
    fn reads_from_toml_shaped_json() {
        let l: KvLayout =
            serde_json::from_str(r#"{"tokens_per_block":16,"bytes_per_token":4096}"#).unwrap();
        assert_eq!(l, layout(16, 4096));
    }
}
