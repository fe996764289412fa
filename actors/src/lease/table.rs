//! A session's leases, as pure data: time comes in as an argument.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{LeaseError, LeaseId};

/// Where a lease's holder lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// In this process: released by dropping its guard; never revoked.
    Local,
    /// Across a process boundary: must heartbeat, else it is revoked.
    Remote { last_beat: Instant },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Released,
    Revoked,
}

/// How many finished leases are remembered, to tell "released twice" and
/// "revoked" apart from "never granted".
const REMEMBERED: usize = 32;

/// A session's leases. Most sessions never take one, so the table is one
/// pointer until the first lease (an idle session's size matters at a million).
#[derive(Debug, Default, Clone)]
pub(crate) struct LeaseTable(Option<Box<Leases>>);

#[derive(Debug, Default, Clone)]
pub(crate) struct Leases {
    held: HashMap<LeaseId, Holder>,
    finished: VecDeque<(LeaseId, Fate)>,
    missed_on_revoke: u32,
}

impl LeaseTable {
    /// No lease was ever taken (nothing held, nothing remembered).
    pub(crate) fn is_untouched(&self) -> bool {
        self.0.is_none()
    }
}

impl std::ops::Deref for LeaseTable {
    type Target = Leases;

    fn deref(&self) -> &Leases {
        static EMPTY: std::sync::OnceLock<Leases> = std::sync::OnceLock::new();
        self.0
            .as_deref()
            .unwrap_or_else(|| EMPTY.get_or_init(Leases::default))
    }
}

impl std::ops::DerefMut for LeaseTable {
    fn deref_mut(&mut self) -> &mut Leases {
        self.0.get_or_insert_with(Box::default)
    }
}

impl Leases {
    pub(crate) fn acquire(&mut self, holder: Holder) -> LeaseId {
        let id = LeaseId::next();
        self.held.insert(id, holder);
        id
    }

    pub(crate) fn release(&mut self, id: LeaseId) -> Result<(), LeaseError> {
        match self.held.remove(&id) {
            Some(_) => {
                self.remember(id, Fate::Released);
                Ok(())
            }
            None => Err(self.not_held(id)),
        }
    }

    pub(crate) fn heartbeat(&mut self, id: LeaseId, now: Instant) -> Result<(), LeaseError> {
        match self.held.get_mut(&id) {
            Some(Holder::Remote { last_beat }) => {
                *last_beat = now;
                Ok(())
            }
            Some(Holder::Local) => Ok(()),
            None => Err(self.not_held(id)),
        }
    }

    /// Revokes every remote lease silent for longer than `after`; returns them.
    pub(crate) fn revoke_silent(
        &mut self,
        now: Instant,
        after: Duration,
        missed: u32,
    ) -> Vec<LeaseId> {
        let silent: Vec<LeaseId> = self
            .held
            .iter()
            .filter_map(|(id, holder)| match holder {
                Holder::Remote { last_beat } if now.duration_since(*last_beat) > after => Some(*id),
                _ => None,
            })
            .collect();
        for id in &silent {
            self.held.remove(id);
            self.remember(*id, Fate::Revoked);
        }
        self.missed_on_revoke = missed;
        silent
    }

    /// Forgets every lease still held (a forced end); returns how many there were.
    pub(crate) fn force_all(&mut self) -> usize {
        let n = self.held.len();
        for id in self.held.keys().copied().collect::<Vec<_>>() {
            self.remember(id, Fate::Revoked);
        }
        self.held.clear();
        n
    }

    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(crate) fn has_remote(&self) -> bool {
        self.held
            .values()
            .any(|h| matches!(h, Holder::Remote { .. }))
    }

    fn remember(&mut self, id: LeaseId, fate: Fate) {
        if self.finished.len() == REMEMBERED {
            self.finished.pop_front();
        }
        self.finished.push_back((id, fate));
    }

    fn not_held(&self, lease: LeaseId) -> LeaseError {
        match self.finished.iter().rev().find(|(id, _)| *id == lease) {
            Some((_, Fate::Released)) => LeaseError::AlreadyReleased { lease },
            Some((_, Fate::Revoked)) => LeaseError::Revoked {
                lease,
                missed: self.missed_on_revoke,
            },
            None => LeaseError::Unknown { lease },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_twice_and_unknown_are_told_apart() {
        let mut t = LeaseTable::default();
        let id = t.acquire(Holder::Local);
        assert_eq!(t.release(id), Ok(()));
        assert_eq!(
            t.release(id),
            Err(LeaseError::AlreadyReleased { lease: id })
        );
        let stranger = LeaseId(u64::MAX);
        assert_eq!(
            t.heartbeat(stranger, Instant::now()),
            Err(LeaseError::Unknown { lease: stranger })
        );
    }

    #[test]
    fn only_silent_remote_leases_are_revoked() {
        let start = Instant::now();
        let mut t = LeaseTable::default();
        let local = t.acquire(Holder::Local);
        let beating = t.acquire(Holder::Remote { last_beat: start });
        let silent = t.acquire(Holder::Remote { last_beat: start });
        let after = Duration::from_secs(3);
        t.heartbeat(beating, start + Duration::from_secs(2))
            .unwrap();
        let revoked = t.revoke_silent(start + Duration::from_secs(4), after, 3);
        assert_eq!(revoked, vec![silent]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.heartbeat(silent, start),
            Err(LeaseError::Revoked {
                lease: silent,
                missed: 3
            })
        );
        assert!(t.release(local).is_ok());
    }
}
