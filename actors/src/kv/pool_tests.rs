//! Scenario tests of the pool's public operations (the model test covers
//! random sequences).

use std::time::{Duration, Instant};

use super::config::tests::config;
use super::*;
use crate::ids::Owner;

const MAX_BUFFER: u64 = 1 << 30;

fn pool_with(f: impl FnOnce(&mut KvPoolConfig)) -> BlockPool {
    let mut c = config();
    f(&mut c);
    BlockPool::new(c, MAX_BUFFER).unwrap()
}

fn scope(o: &str) -> ShareScope {
    ShareScope::Owner(Owner::new(o))
}

/// Appends, adding slabs as asked.
fn append(
    pool: &mut BlockPool,
    t: TableId,
    tokens: &[TokenId],
    now: Instant,
) -> Result<Appended, KvError> {
    loop {
        match pool.append(t, tokens, now)? {
            Grant::Granted(a) => return Ok(a),
            Grant::NeedSlab(_) => {
                pool.add_slab(now).unwrap();
            }
        }
    }
}

fn open(pool: &mut BlockPool, o: &str) -> TableId {
    pool.open_table(Owner::new(o), scope(o))
}

#[test]
fn the_first_append_asks_for_a_slab_and_changes_nothing() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let t = open(&mut pool, "a");
    let Grant::NeedSlab(req) = pool.append(t, &[1, 2, 3, 4, 5], now).unwrap() else {
        panic!("no slab yet")
    };
    assert_eq!(
        req,
        SlabRequest {
            blocks_per_slab: 8,
            slab_bytes: 8 * 64
        }
    );
    assert_eq!(pool.table(t).unwrap().tokens(), 0);
    pool.add_slab(now).unwrap();
    let a = pool
        .append(t, &[1, 2, 3, 4, 5], now)
        .unwrap()
        .granted()
        .unwrap();
    assert_eq!(
        a,
        Appended {
            first_new: 0,
            new_blocks: 2,
            tokens: 5
        }
    );
    let snap = pool.snapshot(t).unwrap();
    assert_eq!(snap[0].offset, 0);
    assert_eq!(snap[1].offset, 64);
    pool.assert_invariants();
}

#[test]
fn shared_prefixes_are_referenced_not_copied_and_released_once() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let prompt: Vec<TokenId> = (0..10).collect();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &prompt, now).unwrap();
    let b = open(&mut pool, "o");
    let m = pool.match_prefix(&scope("o"), &prompt);
    assert_eq!(
        m.tokens(),
        8,
        "two full blocks; the partial third is never shared"
    );
    assert_eq!(pool.claim_prefix(b, &m, &prompt).unwrap(), 8);
    append(&mut pool, b, &prompt[8..], now).unwrap();
    let (ta, tb) = (
        pool.table(a).unwrap().blocks().to_vec(),
        pool.table(b).unwrap().blocks().to_vec(),
    );
    assert_eq!(ta[..2], tb[..2]);
    assert_ne!(ta[2], tb[2]);
    assert_eq!(pool.ref_count(ta[0]), 2);
    let s = pool.stats();
    assert_eq!((s.blocks_shared, s.bytes_saved_by_sharing), (2, 2 * 64));
    assert_eq!((s.prefix_hit_blocks, s.prefix_miss_blocks), (2, 0));
    pool.release_table(a, now).unwrap();
    assert_eq!(pool.ref_count(ta[0]), 1);
    assert_eq!(
        pool.release_table(a, now),
        Err(KvError::UnknownTable(a)),
        "released once"
    );
    pool.release_table(b, now).unwrap();
    let s = pool.stats();
    assert_eq!(
        (s.blocks_referenced, s.blocks_cached),
        (0, 2),
        "full blocks stay cached, partial ones go"
    );
    assert_eq!(s.blocks_held_by_released_tables, 0);
    pool.assert_invariants();
}

#[test]
fn other_scopes_never_share() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let prompt: Vec<TokenId> = (0..8).collect();
    let a = open(&mut pool, "a");
    append(&mut pool, a, &prompt, now).unwrap();
    assert_eq!(pool.match_prefix(&scope("b"), &prompt).tokens(), 0);
    let salted = ShareScope::Salt(Salt([1; 32]));
    assert_eq!(pool.match_prefix(&salted, &prompt).tokens(), 0);
    // A match from one scope cannot be claimed by a table of another.
    let m = pool.match_prefix(&scope("a"), &prompt);
    let b = open(&mut pool, "b");
    assert_eq!(
        pool.claim_prefix(b, &m, &prompt),
        Err(KvError::PrefixScopeMismatch)
    );
}

#[test]
fn a_salt_shares_across_owners_and_charges_each_its_own_references() {
    let mut pool = pool_with(|c| c.owner_budget = Some(BlockBudget::Blocks(3)));
    let now = Instant::now();
    let salted = ShareScope::Salt(Salt([9; 32]));
    let prompt: Vec<TokenId> = (0..8).collect();
    let a = pool.open_table(Owner::new("a"), salted.clone());
    append(&mut pool, a, &prompt, now).unwrap();
    let b = pool.open_table(Owner::new("b"), salted.clone());
    let m = pool.match_prefix(&salted, &prompt);
    pool.claim_prefix(b, &m, &prompt).unwrap();
    assert_eq!(pool.owner_charge(&Owner::new("a")), 2);
    assert_eq!(pool.owner_charge(&Owner::new("b")), 2);
    // b fills its own budget; a's budget is untouched by b's references.
    append(&mut pool, b, &[1], now).unwrap();
    assert!(matches!(
        append(&mut pool, b, &[1, 2, 3, 4], now),
        Err(KvError::OverOwnerBudget { .. })
    ));
    append(&mut pool, a, &[1], now).unwrap();
    pool.release_table(a, now).unwrap();
    assert_eq!(pool.owner_charge(&Owner::new("a")), 0);
    assert_eq!(
        pool.owner_charge(&Owner::new("b")),
        3,
        "b still pays for what it references"
    );
    pool.assert_invariants();
}

#[test]
fn a_claim_whose_tokens_do_not_match_is_refused() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let prompt: Vec<TokenId> = (0..8).collect();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &prompt, now).unwrap();
    let m = pool.match_prefix(&scope("o"), &prompt);
    let b = open(&mut pool, "o");
    let mut other = prompt.clone();
    other[5] = 99;
    assert_eq!(
        pool.claim_prefix(b, &m, &other),
        Err(KvError::PrefixMismatch { block_index: 1 })
    );
    assert_eq!(
        pool.claim_prefix(b, &m, &prompt[..6]),
        Err(KvError::PrefixMismatch { block_index: 1 })
    );
    assert_eq!(pool.table(b).unwrap().tokens(), 0, "nothing changed");
    pool.claim_prefix(b, &m, &prompt).unwrap();
    assert_eq!(
        pool.claim_prefix(b, &m, &prompt),
        Err(KvError::TableNotEmpty(b))
    );
    pool.assert_invariants();
}

#[test]
fn a_prefix_evicted_since_its_match_is_stale() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let prompt: Vec<TokenId> = (0..8).collect();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &prompt, now).unwrap();
    let m = pool.match_prefix(&scope("o"), &prompt);
    pool.release_table(a, now).unwrap();
    assert_eq!(pool.evict_cached(1, now), 1);
    let b = open(&mut pool, "o");
    assert!(matches!(
        pool.claim_prefix(b, &m, &prompt),
        Err(KvError::PrefixStale { .. })
    ));
    pool.assert_invariants();
}

#[test]
fn a_fork_shares_full_blocks_and_copies_the_partial_one() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &[1, 2, 3, 4, 5, 6], now).unwrap();
    let Grant::Granted(f) = pool.fork(a, now).unwrap() else {
        panic!("slab has room")
    };
    let copy = f.copy.expect("partial block is copied");
    let (pa, pf) = (
        pool.table(a).unwrap().blocks().to_vec(),
        pool.table(f.table).unwrap().blocks().to_vec(),
    );
    assert_eq!(pa[0], pf[0]);
    assert_eq!(copy.from, pool.location(pa[1]));
    assert_eq!(copy.to, pool.location(pf[1]));
    assert_eq!(copy.tokens, 2);
    // Both go on independently; the copy's hash chain matches the parent's.
    append(&mut pool, a, &[7, 8], now).unwrap();
    append(&mut pool, f.table, &[7, 8], now).unwrap();
    assert_eq!(
        pool.match_prefix(&scope("o"), &[1, 2, 3, 4, 5, 6, 7, 8])
            .tokens(),
        8
    );
    pool.release_table(a, now).unwrap();
    pool.release_table(f.table, now).unwrap();
    assert_eq!(pool.stats().blocks_referenced, 0);
    pool.assert_invariants();
}

#[test]
fn a_fork_of_full_blocks_copies_nothing() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &[1, 2, 3, 4], now).unwrap();
    let f = pool.fork(a, now).unwrap().granted().unwrap();
    assert_eq!(f.copy, None);
    assert_eq!(pool.stats().blocks_shared, 1);
}

#[test]
fn allocation_prefers_free_blocks_then_expired_cache_then_a_slab_then_pressure() {
    let mut pool = pool_with(|c| {
        c.keep_alive = Duration::from_secs(60);
        c.device_budget = BlockBudget::Blocks(16);
    });
    let t0 = Instant::now();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &(0..32).collect::<Vec<_>>(), t0).unwrap(); // 8 blocks: slab 0 full
    pool.release_table(a, t0).unwrap(); // 4 cached (budget 4), 4 free
    assert_eq!(pool.stats().blocks_cached, 4);
    let b = open(&mut pool, "p");
    // 4 free blocks: no eviction.
    append(&mut pool, b, &[0; 16], t0).unwrap();
    assert_eq!(pool.stats().blocks_cached, 4);
    // Inside keep-alive: a new slab rather than an eviction.
    assert!(matches!(
        pool.append(b, &[0; 4], t0).unwrap(),
        Grant::NeedSlab(_)
    ));
    // Past keep-alive: evict instead.
    let later = t0 + Duration::from_secs(61);
    pool.append(b, &[0; 4], later).unwrap().granted().unwrap();
    assert_eq!(pool.stats().blocks_cached, 3);
    // Device budget reached: pressure evicts even inside keep-alive.
    pool.add_slab(later).unwrap();
    let c = open(&mut pool, "q");
    append(&mut pool, c, &[0; 32], later).unwrap(); // the new slab's 8 blocks
    let d = open(&mut pool, "q");
    pool.append(d, &[0; 12], later).unwrap().granted().unwrap();
    assert_eq!(pool.stats().blocks_cached, 0);
    assert_eq!(
        pool.append(d, &[0; 4], later).unwrap_err(),
        KvError::OutOfBlocks {
            needed: 1,
            reclaimable: 0
        }
    );
    assert!(!pool.can_ever_fit(&Owner::new("q"), 1));
    pool.assert_invariants();
}

#[test]
fn the_cache_budget_evicts_its_oldest_block_and_zero_turns_it_off() {
    let mut pool = pool_with(|c| c.cache_budget = BlockBudget::Blocks(1));
    let now = Instant::now();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &[1, 2, 3, 4, 5, 6, 7, 8], now).unwrap();
    pool.release_table(a, now).unwrap();
    let s = pool.stats();
    assert_eq!((s.blocks_cached, s.blocks_free), (1, 7));
    // Released last-first, so the chain's root is what stays.
    assert_eq!(pool.match_prefix(&scope("o"), &[1, 2, 3, 4]).tokens(), 4);

    let mut off = pool_with(|c| c.cache_budget = BlockBudget::Blocks(0));
    let a = open(&mut off, "o");
    append(&mut off, a, &[1, 2, 3, 4], now).unwrap();
    off.release_table(a, now).unwrap();
    assert_eq!(off.stats().blocks_cached, 0);
    off.assert_invariants();
}

#[test]
fn an_idle_slab_is_trimmable_and_a_busy_one_is_refused() {
    let mut pool = pool_with(|c| c.slab_idle_trim = Duration::from_secs(10));
    let t0 = Instant::now();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &[1, 2], t0).unwrap();
    let slab = pool.table(a).unwrap().blocks()[0].slab;
    assert_eq!(
        pool.remove_slab(slab),
        Err(SlabError::SlabInUse { slab, in_use: 1 })
    );
    pool.release_table(a, t0).unwrap(); // partial block: freed, not cached
    assert_eq!(pool.trimmable_slabs(t0 + Duration::from_secs(9)).count(), 0);
    let later = t0 + Duration::from_secs(10);
    assert_eq!(pool.trimmable_slabs(later).collect::<Vec<_>>(), vec![slab]);
    pool.remove_slab(slab).unwrap();
    assert_eq!(pool.remove_slab(slab), Err(SlabError::UnknownSlab(slab)));
    let s = pool.stats();
    assert_eq!(
        (s.slabs_created, s.slabs_trimmed, s.blocks_total),
        (1, 1, 0)
    );
    // The next slab gets a new id.
    let b = open(&mut pool, "o");
    append(&mut pool, b, &[1], later).unwrap();
    assert_ne!(pool.table(b).unwrap().blocks()[0].slab, slab);
    pool.assert_invariants();
}

#[test]
fn allocation_fills_slabs_in_use_before_an_empty_one() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    pool.add_slab(now).unwrap();
    pool.add_slab(now).unwrap();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &[0; 4], now).unwrap();
    let first = pool.table(a).unwrap().blocks()[0].slab;
    append(&mut pool, a, &[0; 28], now).unwrap();
    assert!(
        pool.table(a)
            .unwrap()
            .blocks()
            .iter()
            .all(|b| b.slab == first)
    );
    assert_eq!(
        pool.trimmable_slabs(now + Duration::from_secs(10)).count(),
        1
    );
}

#[test]
fn the_device_budget_and_table_cap_are_enforced() {
    let mut pool = pool_with(|c| c.table_cap_blocks = Some(2));
    let now = Instant::now();
    pool.add_slab(now).unwrap();
    pool.add_slab(now).unwrap();
    assert!(matches!(
        pool.add_slab(now),
        Err(SlabError::OverDeviceBudget { .. })
    ));
    let a = open(&mut pool, "o");
    assert_eq!(
        pool.append(a, &[0; 9], now).unwrap_err(),
        KvError::OverTableCap {
            needed: 3,
            held: 0,
            limit: 2
        }
    );
    assert!(pool.can_ever_fit(&Owner::new("o"), 16));
    assert!(!pool.can_ever_fit(&Owner::new("o"), 17));
}

#[test]
fn unknown_tables_are_refused() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let a = open(&mut pool, "o");
    pool.release_table(a, now).unwrap();
    assert_eq!(
        pool.append(a, &[1], now).unwrap_err(),
        KvError::UnknownTable(a)
    );
    assert_eq!(pool.fork(a, now).unwrap_err(), KvError::UnknownTable(a));
    assert_eq!(pool.snapshot(a).unwrap_err(), KvError::UnknownTable(a));
}

#[test]
fn a_duplicate_prefix_takes_over_when_the_findable_one_goes() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let a = open(&mut pool, "o");
    let b = open(&mut pool, "o");
    append(&mut pool, a, &[1, 2, 3, 4], now).unwrap();
    append(&mut pool, b, &[1, 2, 3, 4], now).unwrap(); // computed independently
    let own_b = pool.table(b).unwrap().blocks().to_vec();
    pool.release_table(a, now).unwrap();
    assert_eq!(pool.evict_cached(1, now), 1);
    // b's private copy becomes findable once its table lets it go.
    assert_eq!(pool.match_prefix(&scope("o"), &[1, 2, 3, 4]).tokens(), 0);
    pool.release_table(b, now).unwrap();
    assert_eq!(
        pool.match_prefix(&scope("o"), &[1, 2, 3, 4]).blocks(),
        own_b
    );
    pool.assert_invariants();
}

#[test]
fn an_offload_moves_only_the_unshared_suffix_and_a_restore_charges_it_again() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let prompt: Vec<TokenId> = (0..8).collect();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &prompt, now).unwrap();
    let b = open(&mut pool, "o");
    let m = pool.match_prefix(&scope("o"), &prompt);
    pool.claim_prefix(b, &m, &prompt).unwrap();
    // b's own turn: one full block and a partial one.
    append(&mut pool, b, &(100..106).collect::<Vec<_>>(), now).unwrap();
    assert_eq!(pool.owner_charge(&Owner::new("o")), 2 + 4);

    let plan = pool.offload_plan(b).unwrap();
    assert_eq!(plan.first, 2, "the shared prompt stays");
    assert_eq!(plan.blocks.len(), 2);
    assert_eq!(pool.offload(b, plan.first, now), Ok(2));
    assert_eq!(pool.table(b).unwrap().offloaded_blocks(), 2);
    assert_eq!(pool.owner_charge(&Owner::new("o")), 2 + 2);
    assert_eq!(pool.stats().blocks_offloaded, 2);
    assert_eq!(pool.append(b, &[1], now), Err(KvError::Offloaded(b)));
    assert_eq!(pool.fork(b, now), Err(KvError::Offloaded(b)));
    assert_eq!(pool.snapshot(b), Err(KvError::Offloaded(b)));
    // The prompt is still a's and b's.
    assert_eq!(pool.stats().blocks_shared, 2);
    pool.assert_invariants();

    let r = loop {
        match pool.restore(b, now).unwrap() {
            Grant::Granted(r) => break r,
            Grant::NeedSlab(_) => {
                pool.add_slab(now).unwrap();
            }
        }
    };
    assert_eq!((r.first, r.blocks.len()), (2, 2));
    assert!(
        r.hashes[0].is_some() && r.hashes[1].is_none(),
        "full and partial"
    );
    pool.restored(b, r).unwrap();
    assert_eq!(pool.owner_charge(&Owner::new("o")), 2 + 4);
    assert_eq!(pool.stats().blocks_offloaded, 0);
    // The restored full block is findable again: a third sharer finds 3 blocks.
    let all: Vec<TokenId> = prompt.iter().copied().chain(100..104).collect();
    assert_eq!(pool.match_prefix(&scope("o"), &all).tokens(), 12);
    append(&mut pool, b, &[7], now).unwrap();
    pool.assert_invariants();
}

#[test]
fn a_block_shared_between_plan_and_offload_stays_and_a_released_offloaded_table_is_clean() {
    let mut pool = pool_with(|_| {});
    let now = Instant::now();
    let tokens: Vec<TokenId> = (0..10).collect();
    let a = open(&mut pool, "o");
    append(&mut pool, a, &tokens, now).unwrap();
    let plan = pool.offload_plan(a).unwrap();
    assert_eq!((plan.first, plan.blocks.len()), (0, 3));
    // Someone claims a's first two blocks while a's bytes are being copied.
    let b = open(&mut pool, "o");
    let m = pool.match_prefix(&scope("o"), &tokens);
    pool.claim_prefix(b, &m, &tokens).unwrap();
    assert_eq!(
        pool.offload(a, plan.first, now),
        Ok(2),
        "only the partial block moves"
    );
    assert_eq!(pool.table(a).unwrap().offloaded_blocks(), 1);
    pool.assert_invariants();
    // Ending while offloaded: the references on the device go, the count too.
    pool.release_table(a, now).unwrap();
    pool.release_table(b, now).unwrap();
    let s = pool.stats();
    assert_eq!((s.blocks_offloaded, s.blocks_referenced), (0, 0));
    assert_eq!(s.blocks_held_by_released_tables, 0);
    pool.assert_invariants();
}

#[test]
fn only_blocks_handed_out_again_are_listed_for_clearing() {
    let mut pool = pool_with(|c| c.cache_budget = BlockBudget::Blocks(0));
    let now = Instant::now();
    let a = open(&mut pool, "a");
    append(&mut pool, a, &(0..20).collect::<Vec<_>>(), now).unwrap();
    assert_eq!(pool.take_recycled(), vec![], "a new slab's blocks are zero");
    let first = pool.snapshot(a).unwrap();
    pool.release_table(a, now).unwrap();
    let b = open(&mut pool, "b");
    append(&mut pool, b, &[1], now).unwrap();
    let recycled = pool.take_recycled();
    assert_eq!(recycled.len(), 1);
    assert!(first.contains(&recycled[0]), "one of a's blocks, again");
    assert_eq!(pool.take_recycled(), vec![], "listed once");
}
