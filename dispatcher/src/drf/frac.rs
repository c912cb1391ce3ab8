//! Exact fractions (compared by cross-multiplying in `u128`) and resource vectors: shares and
//! headroom.

use std::cmp::Ordering;

use schemas::Resources;

/// `num / den` with `den > 0`, compared exactly.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frac {
    pub(super) num: u64,
    pub(super) den: u64,
}

impl Frac {
    pub(super) const ZERO: Frac = Frac { num: 0, den: 1 };

    pub(super) fn new(num: u64, den: u64) -> Frac {
        debug_assert!(den > 0);
        Frac { num, den }
    }

    pub(super) fn to_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl Ord for Frac {
    fn cmp(&self, o: &Frac) -> Ordering {
        (u128::from(self.num) * u128::from(o.den)).cmp(&(u128::from(o.num) * u128::from(self.den)))
    }
}

impl PartialOrd for Frac {
    fn partial_cmp(&self, o: &Frac) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Frac {
    fn eq(&self, o: &Frac) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Frac {}

pub(super) type Vec3 = [u64; 3];

pub(super) fn arr(r: Resources) -> Vec3 {
    [r.cpu_millicores, r.memory_mb, r.disk_mb]
}

/// `a <= b` on every component.
pub(super) fn le(a: Vec3, b: Vec3) -> bool {
    a[0] <= b[0] && a[1] <= b[1] && a[2] <= b[2]
}

/// Smallest `free / cap` over the resources with `cap > 0`; zero when there is none.
pub(super) fn headroom(free: Vec3, cap: Vec3) -> Frac {
    free.into_iter()
        .zip(cap)
        .filter(|&(_, c)| c > 0)
        .map(|(f, c)| Frac::new(f.min(c), c))
        .min()
        .unwrap_or(Frac::ZERO)
}

/// Headroom of a worker with `free` room and `cap` capacity once `demand` (which fits) is placed.
pub(super) fn headroom_after(free: Vec3, cap: Vec3, demand: Vec3) -> Frac {
    headroom(
        [
            free[0] - demand[0],
            free[1] - demand[1],
            free[2] - demand[2],
        ],
        cap,
    )
}

/// Largest `alloc / total` over the resources with `total > 0`; zero when there is none.
pub(super) fn dominant_share(alloc: Vec3, total: Vec3) -> Frac {
    alloc
        .into_iter()
        .zip(total)
        .filter(|&(_, t)| t > 0)
        .map(|(a, t)| Frac::new(a, t))
        .max()
        .unwrap_or(Frac::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_compare_exactly() {
        assert_eq!(Frac::new(1, 3), Frac::new(2, 6));
        assert!(Frac::new(1, 3) < Frac::new(333_334, 1_000_000));
        assert!(Frac::new(u64::MAX - 1, u64::MAX) < Frac::new(u64::MAX, u64::MAX));
        assert_eq!(
            dominant_share([1000, 0, 0], [3000, 6000, 0]),
            Frac::new(1, 3)
        );
        assert_eq!(dominant_share([5, 5, 5], [0, 0, 0]), Frac::ZERO);
        assert_eq!(headroom([1, 5, 0], [2, 10, 0]), Frac::new(1, 2));
        assert_eq!(headroom([0, 0, 0], [0, 0, 0]), Frac::ZERO);
    }
}
