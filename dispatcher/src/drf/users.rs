//! Users and classes: a user's slot, its seat in the class of its head task's demand, and the
//! classes' life cycle.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use schemas::Resources;

use super::frac::{arr, dominant_share};
use super::state::{id_prefix, Class, User, UserKey};
use super::Scheduler;

impl Scheduler {
    // ----- internals: users ---------------------------------------------------------------------

    pub(super) fn user_slot(&mut self, id: &str) -> u32 {
        if let Some(&u) = self.user_ix.get(id) {
            return u;
        }
        let arc: Arc<str> = Arc::from(id);
        let user = User {
            id: arc.clone(),
            id_prefix: id_prefix(id),
            queue: VecDeque::new(),
            alloc: Resources::default(),
            running: 0,
            seat: None,
        };
        let u = match self.free_users.pop() {
            Some(u) => {
                self.users[u as usize] = Some(user);
                u
            }
            None => {
                self.users.push(Some(user));
                (self.users.len() - 1) as u32
            }
        };
        self.user_ix.insert(arc, u);
        u
    }

    pub(super) fn gc_user(&mut self, u: u32) {
        let user = self.user(u);
        if user.queue.is_empty() && user.running == 0 {
            let id = user.id.clone();
            self.user_ix.remove(&id);
            self.users[u as usize] = None;
            self.free_users.push(u);
        }
    }

    /// Puts the user in the class of its head task under its current key (or nowhere when its
    /// queue is empty), wherever it sat before.
    pub(super) fn reseat(&mut self, u: u32) {
        let total = self.total;
        let user = self.users[u as usize].as_mut().expect("live user slot");
        let old = user.seat.take();
        let new = user.queue.front().map(|(_, t)| {
            (
                t.demand,
                UserKey {
                    share: dominant_share(arr(user.alloc), total),
                    running: user.running,
                    id_prefix: user.id_prefix,
                    id: user.id.clone(),
                    ix: u,
                },
            )
        });
        let seat = match (old, new) {
            (None, None) => None,
            (Some((c, old_key)), None) => {
                self.leave_class(c, &old_key);
                None
            }
            (old, Some((demand, key))) => {
                let c = match old {
                    Some((c, old_key)) if self.class_demand(c) == demand => {
                        // Same class: re-key in place, the class stays tracked if it is. The
                        // tree only cares when the class's first user changes.
                        let class = self.class_mut(c);
                        let was_first = class.members.first() == Some(&old_key);
                        class.members.remove(&old_key);
                        class.members.insert(key.clone());
                        if was_first || class.members.first() == Some(&key) {
                            self.ctree.update(&self.classes, c);
                        }
                        c
                    }
                    old => {
                        if let Some((c, old_key)) = old {
                            self.leave_class(c, &old_key);
                        }
                        let c = self.class_slot(demand);
                        let class = self.class_mut(c);
                        class.members.insert(key.clone());
                        if class.members.first() == Some(&key) {
                            self.ctree.update(&self.classes, c);
                        }
                        c
                    }
                };
                Some((c, key))
            }
        };
        self.user_mut(u).seat = seat;
    }

    pub(super) fn class_demand(&self, c: u32) -> Resources {
        self.classes[c as usize]
            .as_ref()
            .expect("live class slot")
            .demand
    }

    pub(super) fn class_slot(&mut self, demand: Resources) -> u32 {
        if let Some(&c) = self.class_ix.get(&demand) {
            return c;
        }
        let class = Class {
            demand,
            members: BTreeSet::new(),
            tracked: false,
            fits: 0,
        };
        let c = match self.free_classes.pop() {
            Some(c) => {
                self.classes[c as usize] = Some(class);
                c
            }
            None => {
                self.classes.push(Some(class));
                (self.classes.len() - 1) as u32
            }
        };
        self.class_ix.insert(demand, c);
        c
    }

    pub(super) fn leave_class(&mut self, c: u32, key: &UserKey) {
        let class = self.class_mut(c);
        let was_first = class.members.first() == Some(key);
        class.members.remove(key);
        if !was_first {
            return;
        }
        if class.members.is_empty() {
            // An empty class is dropped; whoever arrives later starts a fresh, unverified one.
            let demand = class.demand;
            self.classes[c as usize] = None;
            self.class_ix.remove(&demand);
            self.free_classes.push(c);
        }
        self.ctree.update(&self.classes, c);
    }
}
