//! The tournament tree over classes: the best unverified class and the best placeable tracked
//! class at the root, and the counts of the tracked classes kept up to date as workers' free
//! room changes.

use std::cmp::Ordering;

use super::frac::{arr, le, Frac, Vec3};
use super::state::{Class, UserKey, NONE, TRACK_UP_TO};

/// A copy of a class's first user's key, minus the full id, so that comparing two classes
/// rarely has to look into the classes themselves.
#[derive(Debug, Clone, Copy)]
pub(super) struct QuickKey {
    pub(super) share: Frac,
    pub(super) running: u64,
    pub(super) id_prefix: u64,
}

pub(super) const NO_KEY: QuickKey = QuickKey {
    share: Frac::ZERO,
    running: 0,
    id_prefix: 0,
};

impl QuickKey {
    pub(super) fn of(key: &UserKey) -> QuickKey {
        QuickKey {
            share: key.share,
            running: key.running,
            id_prefix: key.id_prefix,
        }
    }
}

/// Component-wise minimum demand of no class.
pub(super) const NO_DEMAND: Vec3 = [u64::MAX; 3];

pub(super) fn class_key(classes: &[Option<Class>], c: u32) -> &UserKey {
    classes[c as usize]
        .as_ref()
        .and_then(|k| k.members.first())
        .expect("tree holds non-empty classes only")
}

/// A tournament tree over class slots. Each node holds the best unverified class and the best
/// placeable (tracked, fitting somewhere) class of its subtree, and the component-wise minimum
/// demand of the tracked classes below.
#[derive(Debug, Default)]
pub(super) struct ClassTree {
    pub(super) cap: usize,
    /// Per class slot: its first user's key (meaningless for an empty slot).
    pub(super) keys: Vec<QuickKey>,
    /// Per node: (best unverified, best placeable), `NONE` when there is none.
    pub(super) nodes: Vec<(u32, u32)>,
    /// Per node: component-wise minimum demand of the tracked classes below (the recount walks
    /// only this).
    pub(super) tmin: Vec<Vec3>,
}

impl ClassTree {
    pub(super) fn better(&self, classes: &[Option<Class>], a: u32, b: u32) -> u32 {
        if a == NONE {
            return b;
        }
        if b == NONE {
            return a;
        }
        let (x, y) = (&self.keys[a as usize], &self.keys[b as usize]);
        let quick = x
            .share
            .cmp(&y.share)
            .then(x.running.cmp(&y.running))
            .then(x.id_prefix.cmp(&y.id_prefix));
        match quick {
            Ordering::Less => a,
            Ordering::Greater => b,
            Ordering::Equal if class_key(classes, a) < class_key(classes, b) => a,
            Ordering::Equal => b,
        }
    }

    /// Recomputes class `c`'s key and leaf.
    pub(super) fn set_leaf(&mut self, classes: &[Option<Class>], c: usize) {
        let (key, node, tmin) = match classes.get(c).and_then(Option::as_ref) {
            Some(k) => match k.members.first() {
                None => (NO_KEY, (NONE, NONE), NO_DEMAND),
                Some(first) if k.tracked => {
                    let placeable = if k.fits > 0 { c as u32 } else { NONE };
                    (QuickKey::of(first), (NONE, placeable), arr(k.demand))
                }
                Some(first) => (QuickKey::of(first), (c as u32, NONE), NO_DEMAND),
            },
            None => (NO_KEY, (NONE, NONE), NO_DEMAND),
        };
        self.keys[c] = key;
        self.nodes[self.cap + c] = node;
        self.tmin[self.cap + c] = tmin;
    }

    /// Recomputes node `i` from its children; false if it did not change.
    pub(super) fn pull(&mut self, classes: &[Option<Class>], i: usize) -> bool {
        let ((lu, lp), (ru, rp)) = (self.nodes[2 * i], self.nodes[2 * i + 1]);
        let node = (self.better(classes, lu, ru), self.better(classes, lp, rp));
        let (a, b) = (self.tmin[2 * i], self.tmin[2 * i + 1]);
        let tmin = [a[0].min(b[0]), a[1].min(b[1]), a[2].min(b[2])];
        if self.nodes[i] == node && self.tmin[i] == tmin {
            return false;
        }
        self.nodes[i] = node;
        self.tmin[i] = tmin;
        true
    }

    pub(super) fn rebuild(&mut self, classes: &[Option<Class>]) {
        self.cap = classes.len().max(1).next_power_of_two();
        self.keys = vec![NO_KEY; self.cap];
        self.nodes = vec![(NONE, NONE); 2 * self.cap];
        self.tmin = vec![NO_DEMAND; 2 * self.cap];
        for c in 0..classes.len() {
            self.set_leaf(classes, c);
        }
        for i in (1..self.cap).rev() {
            self.pull(classes, i);
        }
    }

    /// Class `c` changed (its first user, key, state or count).
    pub(super) fn update(&mut self, classes: &[Option<Class>], c: u32) {
        if c as usize >= self.cap {
            self.rebuild(classes);
            return;
        }
        self.set_leaf(classes, c as usize);
        let mut i = self.cap + c as usize;
        while i > 1 {
            i /= 2;
            // Above an unchanged node, only c's own key can still matter.
            if !self.pull(classes, i) && self.nodes[i].0 != c && self.nodes[i].1 != c {
                break;
            }
        }
    }

    /// The best class that may be placed: unverified, or tracked with a non-zero count.
    pub(super) fn best(&self, classes: &[Option<Class>]) -> u32 {
        self.nodes
            .get(1)
            .map_or(NONE, |&(u, p)| self.better(classes, u, p))
    }

    /// A live worker's free room went from `before` to `after` (`None`: not live): updates the
    /// counts of the tracked classes either can hold, and the nodes whose summary changed.
    /// Keys do not change here, so an unchanged node means nothing changes above it.
    pub(super) fn recount(
        &mut self,
        classes: &mut [Option<Class>],
        before: Option<Vec3>,
        after: Option<Vec3>,
    ) {
        if before != after && !self.nodes.is_empty() {
            self.recount_at(classes, 1, before, after);
        }
    }

    pub(super) fn recount_at(
        &mut self,
        classes: &mut [Option<Class>],
        i: usize,
        before: Option<Vec3>,
        after: Option<Vec3>,
    ) -> bool {
        let tmin = self.tmin[i];
        let was = before.is_some_and(|f| le(tmin, f));
        let is = after.is_some_and(|f| le(tmin, f));
        if !was && !is {
            return false;
        }
        if i >= self.cap {
            // A tracked class: tmin is its demand.
            if was == is {
                return false;
            }
            let c = i - self.cap;
            let class = classes[c].as_mut().expect("tracked class");
            let had = class.fits > 0;
            if is {
                class.fits += 1;
                if class.fits > TRACK_UP_TO {
                    class.tracked = false;
                    class.fits = 0;
                }
            } else {
                class.fits -= 1;
            }
            if class.tracked && had == (class.fits > 0) {
                return false;
            }
            self.set_leaf(classes, c);
            return true;
        }
        let l = self.recount_at(classes, 2 * i, before, after);
        let r = self.recount_at(classes, 2 * i + 1, before, after);
        (l || r) && self.pull(classes, i)
    }
}
