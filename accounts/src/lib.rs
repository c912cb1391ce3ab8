//! Money, in one place: prices and the cost of a run (`pricing`), available credit — the one
//! formula of the budget cap — and its counters (`credit`), reservations of worst-case cost and
//! per-user limits (`hold`), top-ups, bill payments and the account history (`payments`), card
//! checks (`card`) and the payment provider (`provider`). The gateway and the portal reserve
//! here, the worker prices runs here, the run writer (`common::runstore`) settles finished runs
//! here, the portal moves money here, and the billing job bills the runs these counters count.
//!
//! Depends on `schemas` and the MongoDB driver only, so that every service — `common`'s run
//! writer included — can call it. Errors map to HTTP statuses with [`AccountError::status`].

pub mod card;
pub mod credit;
pub mod hold;
pub mod payments;
pub mod pricing;
pub mod provider;

pub use card::{Card, CardError, ValidCard};
pub use credit::{available_credit, Counters};
pub use hold::{reserve, Limits, Reservation, ReserveError, Settlement};
pub use payments::{history, pay_bill, pay_bill_with, topup, MAX_TOPUP_MICROS, STALE_ATTEMPT_MS};
pub use pricing::{PriceBook, Prices};
pub use provider::{Charge, PaymentProvider, ProviderError, TestProvider, TEST_DECLINED_CARD};

/// New accounts start with this much credit unless configured otherwise.
pub const DEFAULT_FREE_CREDIT_MICROS: i64 = 1_000_000;
/// The variable that configures the free credit of new accounts.
pub const FREE_CREDIT_ENV: &str = "FREE_CREDIT_MICROS";

/// What can go wrong in an account operation.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid card: {0}")]
    InvalidCard(#[from] CardError),
    #[error("invalid amount: {0}")]
    InvalidAmount(String),
    #[error("the card was declined")]
    Declined,
    #[error("the balance ({balance_micros} micros) is too low to pay {amount_micros} micros")]
    InsufficientBalance {
        balance_micros: i64,
        amount_micros: i64,
    },
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("the bill is already paid, or a payment of it is in progress")]
    AlreadyPaid,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AccountError {
    /// The HTTP status of the contract.
    pub fn status(&self) -> u16 {
        match self {
            AccountError::InvalidCard(_) | AccountError::InvalidAmount(_) => 400,
            AccountError::Declined | AccountError::InsufficientBalance { .. } => 402,
            AccountError::NotFound(_) => 404,
            AccountError::AlreadyPaid => 409,
            AccountError::Internal(_) => 500,
        }
    }

    /// The contract's snake_case error code.
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::InvalidCard(_) => "invalid_card",
            AccountError::InvalidAmount(_) => "invalid_amount",
            AccountError::Declined => "card_declined",
            AccountError::InsufficientBalance { .. } => "insufficient_balance",
            AccountError::NotFound(_) => "not_found",
            AccountError::AlreadyPaid => "already_paid",
            AccountError::Internal(_) => "internal",
        }
    }
}

pub(crate) fn internal(e: impl Into<anyhow::Error>, what: &'static str) -> AccountError {
    AccountError::Internal(e.into().context(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_contract() {
        assert_eq!(AccountError::InvalidCard(CardError::Luhn).status(), 400);
        assert_eq!(AccountError::InvalidAmount("x".into()).status(), 400);
        assert_eq!(AccountError::Declined.status(), 402);
        let low = AccountError::InsufficientBalance {
            balance_micros: 1,
            amount_micros: 2,
        };
        assert_eq!((low.status(), low.code()), (402, "insufficient_balance"));
        assert_eq!(AccountError::NotFound("bill").status(), 404);
        assert_eq!(AccountError::AlreadyPaid.status(), 409);
    }
}
