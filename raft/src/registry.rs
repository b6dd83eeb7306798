//! The Raft groups a process hosts, by [`GroupId`]: what the `raft.*` RPC
//! handlers ([`crate::routes`]) dispatch through. A group registers itself
//! when it starts ([`crate::RaftGroup::start`]) and leaves on shutdown.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{GroupHandle, GroupId, StateMachine};

/// GroupId → running group of state machine `S`. Share it as an `Arc`.
pub struct Registry<S: StateMachine> {
    groups: RwLock<BTreeMap<GroupId, GroupHandle<S>>>,
}

impl<S: StateMachine> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            groups: RwLock::new(BTreeMap::new()),
        }
    }
}

impl<S: StateMachine> Registry<S> {
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave the map half-updated
    // (every update is one insert or remove), so poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<GroupId, GroupHandle<S>>> {
        self.groups.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<GroupId, GroupHandle<S>>> {
        self.groups.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The running group `id`, if this process hosts it.
    pub fn get(&self, id: GroupId) -> Option<GroupHandle<S>> {
        self.read().get(&id).cloned()
    }

    /// The ids of the hosted groups, in order.
    pub fn ids(&self) -> Vec<GroupId> {
        self.read().keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Adds a started group; refuses a second group with the same id.
    pub(crate) fn insert(&self, handle: GroupHandle<S>) -> Result<(), RegistryError> {
        let mut groups = self.write();
        let id = handle.group();
        if groups.contains_key(&id) {
            return Err(RegistryError::Duplicate(id));
        }
        groups.insert(id, handle);
        Ok(())
    }

    pub(crate) fn remove(&self, id: GroupId) -> Option<GroupHandle<S>> {
        self.write().remove(&id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("raft group {0} is already running in this process")]
    Duplicate(GroupId),
}
