//! The payment provider top-ups charge: a trait, so a real one can be plugged in, and the
//! built-in test provider of the contract.

use std::fmt;

use futures::future::BoxFuture;

use crate::card::ValidCard;

/// One charge asked of a provider.
#[derive(Debug)]
pub struct Charge<'a> {
    /// Unique per top-up; a provider may use it to make retries idempotent.
    pub idempotency_key: &'a str,
    pub amount_micros: i64,
    pub card: &'a ValidCard,
}

/// Why a provider refused.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("declined: {0}")]
    Declined(String),
    #[error("payment provider unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

/// A card payment provider.
pub trait PaymentProvider: Send + Sync + fmt::Debug {
    /// Charges the card; `Ok` holds the provider's reference.
    fn charge<'a>(&'a self, charge: Charge<'a>) -> BoxFuture<'a, Result<String, ProviderError>>;
}

/// The built-in test provider: accepts every valid card except `4000000000000002`, which it
/// declines.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestProvider;

/// The card number the test provider declines.
pub const TEST_DECLINED_CARD: &str = "4000000000000002";

impl PaymentProvider for TestProvider {
    fn charge<'a>(&'a self, charge: Charge<'a>) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            if charge.card.number() == TEST_DECLINED_CARD {
                Err(ProviderError::Declined("test card declined".into()))
            } else {
                Ok(format!("test-{}", charge.idempotency_key))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::Card;

    #[tokio::test]
    async fn the_test_provider_declines_its_declining_card() {
        let today = (2025, 1);
        let ok =
            crate::card::validate(&Card::new("4242424242424242", "12/30", "123"), today).unwrap();
        let no =
            crate::card::validate(&Card::new(TEST_DECLINED_CARD, "12/30", "123"), today).unwrap();
        let p = TestProvider;
        let charge = |card| Charge {
            idempotency_key: "k",
            amount_micros: 5,
            card,
        };
        assert!(p.charge(charge(&ok)).await.is_ok());
        assert!(matches!(
            p.charge(charge(&no)).await,
            Err(ProviderError::Declined(_))
        ));
    }
}
