//! A full walk of the pool that checks every invariant against the books
//! themselves (tests only: O(blocks + table entries)).

use std::collections::HashMap;

use super::ids::BlockId;
use super::pool::BlockPool;
use super::slab::BlockState;

impl BlockPool {
    /// Panics with a message naming the broken invariant.
    pub(crate) fn assert_invariants(&self) {
        // Reference counts are exactly the number of live tables' entries.
        let mut refs: HashMap<BlockId, u32> = HashMap::new();
        let mut per_owner: HashMap<&crate::ids::Owner, u64> = HashMap::new();
        for t in self.tables.values() {
            for &b in t.blocks() {
                *refs.entry(b).or_default() += 1;
            }
            if !t.blocks().is_empty() {
                *per_owner.entry(t.owner()).or_default() += t.blocks().len() as u64;
            }
            let tpb = u64::from(self.layout().tokens_per_block);
            assert_eq!(
                (t.blocks().len() + t.offloaded_blocks()) as u64,
                t.tokens().div_ceil(tpb),
                "table length (on the device and offloaded)"
            );
            if let Some(&last) = t.blocks().last()
                && t.partial_tokens() > 0
                && t.offloaded_blocks() == 0
            {
                assert_eq!(
                    refs.get(&last).copied(),
                    Some(1),
                    "a partial block is never shared"
                );
            }
        }
        let offloaded: usize = self.tables.values().map(|t| t.offloaded_blocks()).sum();
        assert_eq!(
            self.offloaded_blocks(),
            offloaded as u64,
            "offloaded blocks counter"
        );
        for (owner, &n) in &per_owner {
            assert_eq!(self.owner_charge(owner), n, "owner charge");
        }
        assert_eq!(
            self.owners.len(),
            per_owner.len(),
            "owners with nothing charged are dropped"
        );

        let (mut free, mut cached, mut referenced, mut shared, mut total_refs) = (0, 0, 0, 0, 0);
        let (mut total, mut in_free_lists) = (0, 0);
        for (slab_id, slab) in self.blocks.live_slabs() {
            total += slab.blocks.len() as u64;
            in_free_lists += slab.free.len() as u64;
            for &i in &slab.free {
                assert_eq!(
                    slab.blocks[i as usize].state,
                    BlockState::Free,
                    "free list holds a non-free block"
                );
            }
            let mut in_use = 0;
            for (i, m) in slab.blocks.iter().enumerate() {
                let id = BlockId {
                    slab: slab_id,
                    index: i as u32,
                };
                let want = refs.get(&id).copied().unwrap_or(0);
                match m.state {
                    BlockState::Free => {
                        free += 1;
                        assert_eq!(want, 0, "a free block is referenced");
                    }
                    BlockState::Cached => {
                        cached += 1;
                        in_use += 1;
                        assert_eq!(want, 0, "a cached block is referenced");
                        assert!(m.hash.is_some() && m.indexed, "a cached block is findable");
                    }
                    BlockState::Referenced(n) => {
                        referenced += 1;
                        in_use += 1;
                        total_refs += u64::from(n);
                        shared += u64::from(n >= 2);
                        assert_eq!(n, want, "reference count of {id:?}");
                    }
                }
            }
            assert_eq!(slab.in_use, in_use, "slab in_use");
        }
        let c = &self.blocks.counts;
        assert_eq!(
            free, in_free_lists,
            "every free block is in a free list once"
        );
        assert_eq!(
            (c.total, c.free, c.cached, c.referenced),
            (total, free, cached, referenced),
            "counters"
        );
        assert_eq!(
            free + cached + referenced,
            total,
            "free + cached + referenced == total"
        );
        assert_eq!(
            (c.shared, c.refs),
            (shared, total_refs),
            "shared and refs counters"
        );
        assert_eq!(c.refs, self.table_refs, "blocks held by released tables");
        assert_eq!(self.blocks.lru.len, cached, "LRU length");
        assert!(c.total <= self.blocks.device_blocks(), "device budget");
        assert!(
            c.cached <= self.config().cache_budget.blocks(self.layout()),
            "cache budget"
        );
        if let Some(limit) = self.config().owner_budget {
            let limit = limit.blocks(self.layout());
            assert!(self.owners.values().all(|&n| n <= limit), "owner budget");
        }
    }
}
