//! Model-based test: random sequences of open / append / fork / share /
//! release / evict / trim / add-slab / offload / restore against a reference model of what each
//! table holds. After every step: the pool's own full walk
//! (`assert_invariants`: reference counts exact, free + cached + referenced
//! == total, no block both free and referenced, budgets) and the model's
//! independent checks (token and block counts per table, owner charges,
//! released tables gone, shared blocks hold equal prefixes in equal scopes,
//! trims refused exactly for slabs in use).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::config::tests::config;
use super::*;
use crate::ids::Owner;

const TPB: usize = 4;
const OWNER_LIMIT: u64 = 12;

#[derive(Clone, Debug)]
enum Op {
    Open {
        owner: u8,
        salted: bool,
    },
    Append {
        table: usize,
        tokens: Vec<TokenId>,
    },
    Fork {
        table: usize,
    },
    Share {
        from: usize,
        owner: u8,
        salted: bool,
        corrupt: bool,
    },
    Release {
        table: usize,
    },
    Evict {
        n: u64,
    },
    Trim {
        probe: u32,
    },
    AddSlab,
    Wait {
        secs: u64,
    },
    Offload {
        table: usize,
    },
    /// A restore; `fail`: the copies back failed, and the table goes back to host memory.
    Restore {
        table: usize,
        fail: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..3u8, any::<bool>()).prop_map(|(owner, salted)| Op::Open { owner, salted }),
        4 => (any::<usize>(), prop::collection::vec(0..3u32, 0..11))
            .prop_map(|(table, tokens)| Op::Append { table, tokens }),
        1 => any::<usize>().prop_map(|table| Op::Fork { table }),
        2 => (any::<usize>(), 0..3u8, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(from, owner, salted, corrupt)| Op::Share { from, owner, salted, corrupt }),
        2 => any::<usize>().prop_map(|table| Op::Release { table }),
        1 => (0..4u64).prop_map(|n| Op::Evict { n }),
        1 => (0..6u32).prop_map(|probe| Op::Trim { probe }),
        1 => Just(Op::AddSlab),
        1 => (0..20u64).prop_map(|secs| Op::Wait { secs }),
        1 => any::<usize>().prop_map(|table| Op::Offload { table }),
        2 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(table, fail)| Op::Restore { table, fail }),
    ]
}

/// What the model knows of one table.
struct ModelTable {
    id: TableId,
    owner: Owner,
    scope: ShareScope,
    tokens: Vec<TokenId>,
    live: bool,
    /// Blocks in host memory.
    offloaded: u64,
}

struct Harness {
    pool: BlockPool,
    tables: Vec<ModelTable>,
    now: Instant,
}

fn owner(n: u8) -> Owner {
    Owner::new(format!("owner-{n}"))
}

fn scope_for(owner: &Owner, salted: bool) -> ShareScope {
    if salted {
        ShareScope::Salt(Salt([7; 32]))
    } else {
        ShareScope::Owner(owner.clone())
    }
}

fn blocks_for(tokens: usize) -> u64 {
    tokens.div_ceil(TPB) as u64
}

impl Harness {
    fn new() -> Self {
        let mut c = config();
        c.layout.tokens_per_block = TPB as u32;
        c.blocks_per_slab = 4;
        c.device_budget = BlockBudget::Blocks(16);
        c.cache_budget = BlockBudget::Blocks(5);
        c.owner_budget = Some(BlockBudget::Blocks(OWNER_LIMIT));
        c.keep_alive = Duration::from_secs(5);
        c.slab_idle_trim = Duration::from_secs(10);
        Harness {
            pool: BlockPool::new(c, 1 << 30).unwrap(),
            tables: Vec::new(),
            now: Instant::now(),
        }
    }

    fn live(&self, pick: usize) -> Option<usize> {
        let live: Vec<usize> = (0..self.tables.len())
            .filter(|&i| self.tables[i].live)
            .collect();
        (!live.is_empty()).then(|| live[pick % live.len()])
    }

    fn charge(&self, owner: &Owner) -> u64 {
        self.tables
            .iter()
            .filter(|t| t.live && &t.owner == owner)
            .map(|t| blocks_for(t.tokens.len()) - t.offloaded)
            .sum()
    }

    /// Runs a grant, adding slabs as long as the pool asks (bounded by the budget).
    fn grant<T>(
        &mut self,
        mut f: impl FnMut(&mut BlockPool, Instant) -> Result<Grant<T>, KvError>,
    ) -> Result<T, KvError> {
        loop {
            match f(&mut self.pool, self.now)? {
                Grant::Granted(t) => return Ok(t),
                Grant::NeedSlab(_) => {
                    self.pool
                        .add_slab(self.now)
                        .expect("NeedSlab only within the device budget");
                }
            }
        }
    }

    /// Checks a refusal the model can explain.
    fn expect_refusal(&self, e: &KvError, owner: &Owner, needed: u64) {
        match e {
            KvError::OverOwnerBudget { .. } => {
                assert!(self.charge(owner) + needed > OWNER_LIMIT, "{e}");
            }
            KvError::OutOfBlocks { .. } => {
                let s = self.pool.stats();
                assert!(s.blocks_free + s.blocks_cached < needed, "{e}");
                assert!(!self.pool.can_ever_fit(owner, needed));
            }
            other => panic!("unexpected refusal: {other}"),
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Open { owner: o, salted } => {
                let owner = owner(o);
                let scope = scope_for(&owner, salted);
                let id = self.pool.open_table(owner.clone(), scope.clone());
                self.tables.push(ModelTable {
                    id,
                    owner,
                    scope,
                    tokens: Vec::new(),
                    live: true,
                    offloaded: 0,
                });
            }
            Op::Append { table, tokens } => {
                let Some(i) = self.live(table) else { return };
                let (id, owner) = (self.tables[i].id, self.tables[i].owner.clone());
                let old = self.tables[i].tokens.len();
                let needed = blocks_for(old + tokens.len()) - blocks_for(old);
                if self.tables[i].offloaded > 0 {
                    let refused = self.pool.append(id, &tokens, self.now);
                    assert_eq!(refused, Err(KvError::Offloaded(id)));
                    return;
                }
                match self.grant(|p, now| p.append(id, &tokens, now)) {
                    Ok(a) => {
                        assert_eq!(
                            (a.first_new, a.new_blocks as u64),
                            (blocks_for(old) as usize, needed)
                        );
                        self.tables[i].tokens.extend_from_slice(&tokens);
                    }
                    Err(e) => self.expect_refusal(&e, &owner, needed),
                }
            }
            Op::Fork { table } => {
                let Some(i) = self.live(table) else { return };
                let (id, owner) = (self.tables[i].id, self.tables[i].owner.clone());
                let len = self.tables[i].tokens.len();
                if self.tables[i].offloaded > 0 {
                    assert_eq!(self.pool.fork(id, self.now), Err(KvError::Offloaded(id)));
                    return;
                }
                match self.grant(|p, now| p.fork(id, now)) {
                    Ok(f) => {
                        assert_eq!(
                            f.copy.map(|c| c.tokens as usize),
                            Some(len % TPB).filter(|&n| n > 0)
                        );
                        let t = &self.tables[i];
                        let child = ModelTable {
                            id: f.table,
                            owner: t.owner.clone(),
                            scope: t.scope.clone(),
                            tokens: t.tokens.clone(),
                            live: true,
                            offloaded: 0,
                        };
                        self.tables.push(child);
                    }
                    Err(e) => {
                        // A fork charges the parent's length (and maybe one fresh block).
                        let needed = blocks_for(len);
                        match e {
                            KvError::OverOwnerBudget { .. } => {
                                self.expect_refusal(&e, &owner, needed)
                            }
                            _ => self.expect_refusal(&e, &owner, 1),
                        }
                    }
                }
            }
            Op::Share {
                from,
                owner: o,
                salted,
                corrupt,
            } => {
                if self.tables.is_empty() {
                    return;
                }
                let mut tokens = self.tables[from % self.tables.len()].tokens.clone();
                let owner = owner(o);
                let scope = scope_for(&owner, salted);
                let m = self.pool.match_prefix(&scope, &tokens);
                assert_eq!(m.tokens() as usize % TPB, 0);
                assert!(m.tokens() as usize <= tokens.len());
                let id = self.pool.open_table(owner.clone(), scope.clone());
                self.tables.push(ModelTable {
                    id,
                    owner: owner.clone(),
                    scope,
                    tokens: Vec::new(),
                    live: true,
                    offloaded: 0,
                });
                let i = self.tables.len() - 1;
                if corrupt && m.tokens() > 0 {
                    tokens[m.tokens() as usize - 1] += 100;
                    let last = m.tokens() as usize / TPB - 1;
                    assert_eq!(
                        self.pool.claim_prefix(id, &m, &tokens),
                        Err(KvError::PrefixMismatch { block_index: last })
                    );
                    return;
                }
                match self.pool.claim_prefix(id, &m, &tokens) {
                    Ok(n) => {
                        assert_eq!(n, m.tokens());
                        self.tables[i].tokens = tokens[..n as usize].to_vec();
                    }
                    Err(e) => self.expect_refusal(&e, &owner, m.blocks().len() as u64),
                }
            }
            Op::Release { table } => {
                let Some(i) = self.live(table) else { return };
                let r = self
                    .pool
                    .release_table(self.tables[i].id, self.now)
                    .unwrap();
                let t = &self.tables[i];
                assert_eq!(r.blocks, blocks_for(t.tokens.len()) - t.offloaded);
                self.tables[i].live = false;
                assert_eq!(
                    self.pool.release_table(self.tables[i].id, self.now),
                    Err(KvError::UnknownTable(self.tables[i].id))
                );
            }
            Op::Evict { n } => {
                let cached = self.pool.stats().blocks_cached;
                assert_eq!(self.pool.evict_cached(n, self.now), n.min(cached));
            }
            Op::Trim { probe } => {
                // A probe of any slab id: refused exactly when the slab has blocks in use.
                let slab = SlabId(probe);
                let in_use = self.pool.blocks.slab(slab).map(|s| s.in_use);
                let trimmable: Vec<SlabId> = self.pool.trimmable_slabs(self.now).collect();
                match (self.pool.remove_slab(slab), in_use) {
                    (Ok(()), Some(0)) => {}
                    (Err(SlabError::SlabInUse { .. }), Some(n)) => assert!(n > 0),
                    (Err(SlabError::UnknownSlab(_)), None) => {}
                    (r, u) => panic!("remove_slab({slab}) = {r:?} with in_use {u:?}"),
                }
                for s in trimmable {
                    if s != slab {
                        self.pool
                            .remove_slab(s)
                            .expect("a trimmable slab can be removed");
                    }
                }
            }
            Op::AddSlab => {
                let before = self.pool.stats().blocks_total;
                match self.pool.add_slab(self.now) {
                    Ok(_) => assert!(before + 4 <= 16),
                    Err(e) => assert!(before + 4 > 16, "{e}"),
                }
            }
            Op::Wait { secs } => self.now += Duration::from_secs(secs),
            Op::Offload { table } => {
                let Some(i) = self.live(table) else { return };
                let id = self.tables[i].id;
                if self.tables[i].offloaded > 0 {
                    assert_eq!(self.pool.offload_plan(id), Err(KvError::Offloaded(id)));
                    return;
                }
                let plan = self.pool.offload_plan(id).unwrap();
                let blocks = self.pool.table(id).unwrap().blocks().to_vec();
                // The plan is exactly the unshared suffix.
                assert!(
                    blocks[plan.first..]
                        .iter()
                        .all(|&b| self.pool.ref_count(b) == 1)
                );
                if plan.first > 0 {
                    assert!(self.pool.ref_count(blocks[plan.first - 1]) > 1);
                }
                let first = self.pool.offload(id, plan.first, self.now).unwrap();
                assert_eq!(first, plan.first, "nothing was shared in between");
                self.tables[i].offloaded = (blocks.len() - first) as u64;
                // Nothing moved (every block shared, or none): the table stays usable.
                let usable = self.pool.snapshot(id).is_ok();
                assert_eq!(usable, self.tables[i].offloaded == 0);
            }
            Op::Restore { table, fail } => {
                let Some(i) = self.live(table) else { return };
                let (id, owner) = (self.tables[i].id, self.tables[i].owner.clone());
                let n = self.tables[i].offloaded;
                match self.grant(|p, now| p.restore(id, now)) {
                    Ok(r) => {
                        assert_eq!(r.blocks.len() as u64, n);
                        assert_eq!(r.hashes.len() as u64, n);
                        if fail && n > 0 {
                            let first = self.pool.offload(id, r.first, self.now).unwrap();
                            assert_eq!(first, r.first, "restored blocks are never shared");
                            self.pool.keep_offloaded(id, r.hashes).unwrap();
                        } else {
                            self.pool.restored(id, r).unwrap();
                            self.tables[i].offloaded = 0;
                        }
                    }
                    Err(e) => self.expect_refusal(&e, &owner, n),
                }
            }
        }
    }

    fn check(&self) {
        self.pool.assert_invariants();
        let s = self.pool.stats();
        assert_eq!(s.blocks_held_by_released_tables, 0);
        assert!(s.blocks_total <= 16 && s.blocks_cached <= 5);
        let mut held: HashMap<BlockId, (usize, usize)> = HashMap::new();
        for (i, t) in self.tables.iter().enumerate() {
            let Some(pt) = self.pool.table(t.id) else {
                assert!(!t.live, "a live table is gone");
                continue;
            };
            assert!(t.live, "a released table is still there");
            assert_eq!(pt.tokens() as usize, t.tokens.len());
            assert_eq!(
                pt.blocks().len() as u64,
                blocks_for(t.tokens.len()) - t.offloaded
            );
            assert_eq!(pt.offloaded_blocks() as u64, t.offloaded);
            for (k, &b) in pt.blocks().iter().enumerate() {
                // Two tables sharing a block hold the same tokens up to it, in one scope.
                if let Some(&(j, kk)) = held.get(&b) {
                    let other = &self.tables[j];
                    assert_eq!(k, kk, "a shared block sits at the same position");
                    assert_eq!(t.scope, other.scope, "sharing crosses scopes");
                    let end = (k + 1) * TPB;
                    assert!(
                        t.tokens.len() >= end && other.tokens.len() >= end,
                        "a partial block is shared"
                    );
                    assert_eq!(
                        t.tokens[..end],
                        other.tokens[..end],
                        "a shared block holds different prefixes"
                    );
                } else {
                    held.insert(b, (i, k));
                }
            }
        }
        for o in 0..3 {
            assert_eq!(self.pool.owner_charge(&owner(o)), self.charge(&owner(o)));
            assert!(self.charge(&owner(o)) <= OWNER_LIMIT);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_pool_matches_its_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness::new();
        for op in ops {
            h.step(op);
            h.check();
        }
        // Every table released: nothing referenced, everything free or cached.
        for i in 0..h.tables.len() {
            if h.tables[i].live {
                h.step(Op::Release { table: 0 });
            }
        }
        h.check();
        let s = h.pool.stats();
        prop_assert_eq!(s.blocks_referenced, 0);
        prop_assert_eq!(s.blocks_free + s.blocks_cached, s.blocks_total);
    }
}
