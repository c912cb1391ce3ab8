//! The budget cap's arithmetic. Available credit is, by definition, balance − unpaid bills −
//! the cost of finished runs not on a bill yet. Every finished run's cost ends on exactly one
//! bill, and a paid bill was deducted from the balance exactly once, so the same number is
//!
//! ```text
//! available = balance_micros + paid_micros − spent_micros
//! ```
//!
//! with two counters on the user's document: `spent_micros` (the cost of every finished run,
//! raised by the run writer when a final record lands) and `paid_micros` (raised by the same
//! atomic update that deducts a bill from the balance). One document read instead of summing
//! every unbilled run, however many there are. Accounts created before the counters existed
//! have no `spent_micros`; their credit is still summed from runs and bills.

use bson::Document;

/// Cost of every finished run of the user, ever (micros).
pub const SPENT: &str = "spent_micros";
/// Amount of every bill the user paid, ever (micros).
pub const PAID: &str = "paid_micros";
/// The user's balance (micros).
pub const BALANCE: &str = "balance_micros";

/// Fields to project when reading a user for [`from_counters`].
pub fn projection() -> Document {
    bson::doc! {BALANCE: 1, SPENT: 1, PAID: 1}
}

/// Available credit from the user's counters, or `None` when the account predates them.
pub fn from_counters(user: &Document) -> Option<i64> {
    user.get(SPENT)?;
    let balance = crate::wire::int(user.get(BALANCE));
    let paid = crate::wire::int(user.get(PAID));
    let spent = crate::wire::int(user.get(SPENT));
    Some(balance.saturating_add(paid).saturating_sub(spent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Bson};

    #[test]
    fn counters_give_balance_plus_paid_minus_spent() {
        // 10,000 credited; 1,500 billed (500 of it paid); 34 more spent, not billed yet.
        let u = doc! {"balance_micros": 9_500_i64, "paid_micros": 500, "spent_micros": 1_534};
        assert_eq!(from_counters(&u), Some(10_000 - 1_500 - 34));
        // The stand-in may hand back int32 and a missing `paid_micros` is 0.
        let u = doc! {"balance_micros": Bson::Int32(100), "spent_micros": Bson::Int32(60)};
        assert_eq!(from_counters(&u), Some(40));
    }

    #[test]
    fn accounts_without_counters_are_summed_elsewhere() {
        assert_eq!(from_counters(&doc! {"balance_micros": 5}), None);
    }
}
