//! `SubjectSlots`: how many WebSocket connections each subject (a token's
//! `sub`) has open, so that one customer cannot open connections without
//! limit. A slot is taken before the upgrade is answered, so a refusal is
//! an ordinary HTTP answer (429), and it is given back when its
//! connection's actor is gone (or the upgrade failed): the slot is dropped.
//!
//! The count is shared with the HTTP route, which must answer at once, so
//! it sits behind a mutex rather than in an actor; the lock is held only for
//! a map lookup, never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per subject, and the cap.
pub struct SubjectSlots {
    /// Connections one subject may have open at once.
    limit: usize,
    /// Open connections of every subject that has any (no entry at zero,
    /// so the map never outgrows the connections).
    open: Mutex<HashMap<String, usize>>,
}

/// One open connection's claim on its subject's count; dropping it gives
/// the slot back.
pub struct SubjectSlot {
    slots: Arc<SubjectSlots>,
    subject: String,
}

impl SubjectSlots {
    /// At most `limit` connections per subject (at least 1).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The cap.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more connection of `subject`, unless it has `limit`.
    pub fn reserve(self: &Arc<Self>, subject: &str) -> Option<SubjectSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(subject.to_owned()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(SubjectSlot {
            slots: self.clone(),
            subject: subject.to_owned(),
        })
    }

    /// Connections `subject` has open.
    pub fn open(&self, subject: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(subject).copied().unwrap_or(0)
    }
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.subject) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_gets_at_most_limit_slots_and_others_are_not_affected() {
        let slots = SubjectSlots::new(2);
        let first = slots.reserve("alice").unwrap();
        let _second = slots.reserve("alice").unwrap();
        assert!(slots.reserve("alice").is_none());
        assert!(slots.reserve("bob").is_some(), "bob has his own count");
        drop(first);
        assert_eq!(slots.open("alice"), 1);
        assert!(
            slots.reserve("alice").is_some(),
            "a closed slot is free again"
        );
    }

    #[test]
    fn subjects_without_connections_leave_no_entry() {
        let slots = SubjectSlots::new(3);
        for i in 0..100 {
            drop(slots.reserve(&format!("customer-{i}")).unwrap());
        }
        assert!(slots.open.lock().unwrap().is_empty());
    }
}
