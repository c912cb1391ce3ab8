//! Card checks for top-ups: number (12–19 digits, Luhn), expiry `MM/YY` (valid through the end of
//! that month), CVC (3–4 digits). A card's full number never leaves memory: only its last four
//! digits are stored, and `Debug` never prints more.

use std::fmt;

/// A card as the top-up form or API sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Card {
    pub number: String,
    /// `MM/YY`.
    pub expiry: String,
    pub cvc: String,
}

impl Card {
    pub fn new(
        number: impl Into<String>,
        expiry: impl Into<String>,
        cvc: impl Into<String>,
    ) -> Card {
        Card {
            number: number.into(),
            expiry: expiry.into(),
            cvc: cvc.into(),
        }
    }
}

impl fmt::Debug for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits: String = self.number.chars().filter(char::is_ascii_digit).collect();
        let last4 = &digits[digits.len().saturating_sub(4)..];
        f.debug_struct("Card")
            .field("number", &format!("…{last4}"))
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// A card that passed every check.
#[derive(Clone, PartialEq, Eq)]
pub struct ValidCard {
    /// Digits only.
    number: String,
    pub exp_month: u32,
    /// Four-digit year.
    pub exp_year: i32,
}

impl ValidCard {
    /// The only part of the number that is ever stored or shown.
    pub fn last4(&self) -> &str {
        &self.number[self.number.len() - 4..]
    }

    /// The digits, for the payment provider only.
    pub fn number(&self) -> &str {
        &self.number
    }
}

impl fmt::Debug for ValidCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidCard")
            .field("last4", &self.last4())
            .field("exp_month", &self.exp_month)
            .field("exp_year", &self.exp_year)
            .finish()
    }
}

/// Why a card was refused (a sentence for the 400 body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("the card number must be 12 to 19 digits")]
    NumberFormat,
    #[error("the card number is not valid (checksum)")]
    Luhn,
    #[error("the expiry must be MM/YY")]
    ExpiryFormat,
    #[error("the card has expired")]
    Expired,
    #[error("the CVC must be 3 or 4 digits")]
    Cvc,
}

/// The Luhn checksum over a string of ASCII digits (false for anything else or empty).
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    matches!(sum % 10, 0)
}

/// `MM/YY` → (month, four-digit year).
pub fn parse_expiry(s: &str) -> Option<(u32, i32)> {
    let (m, y) = s.trim().split_once('/')?;
    let (m, y) = (m.trim(), y.trim());
    if m.len() != 2 || y.len() != 2 || !(m.bytes().chain(y.bytes()).all(|b| b.is_ascii_digit())) {
        return None;
    }
    let month: u32 = m.parse().ok()?;
    let year: i32 = y.parse().ok()?;
    (1..=12).contains(&month).then_some((month, 2000 + year))
}

/// True while (month, year) is not before `today`'s month: a card is valid through the end of
/// its expiry month.
pub fn not_expired(month: u32, year: i32, today: (i32, u32)) -> bool {
    (year, month) >= today
}

/// Checks a card against `today` (year, month).
pub fn validate(card: &Card, today: (i32, u32)) -> Result<ValidCard, CardError> {
    let number: String = card
        .number
        .chars()
        .filter(|c| *c != ' ' && *c != '-')
        .collect();
    if !(12..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CardError::NumberFormat);
    }
    if !luhn_valid(&number) {
        return Err(CardError::Luhn);
    }
    let (exp_month, exp_year) = parse_expiry(&card.expiry).ok_or(CardError::ExpiryFormat)?;
    if !not_expired(exp_month, exp_year, today) {
        return Err(CardError::Expired);
    }
    let cvc = card.cvc.trim();
    if !(3..=4).contains(&cvc.len()) || !cvc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CardError::Cvc);
    }
    Ok(ValidCard {
        number,
        exp_month,
        exp_year,
    })
}

/// The current (year, month) in UTC.
pub fn this_month() -> (i32, u32) {
    use chrono::Datelike;
    let now = chrono::Utc::now();
    (now.year(), now.month())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: (i32, u32) = (2025, 6);

    #[test]
    fn luhn() {
        for good in [
            "4242424242424242",
            "4000000000000002",
            "5555555555554444",
            "378282246310005",
            "79927398713",
        ] {
            assert!(luhn_valid(good), "{good}");
        }
        for bad in [
            "4242424242424241",
            "79927398710",
            "",
            "12a4",
            "0000000000000001",
        ] {
            assert!(!luhn_valid(bad), "{bad}");
        }
        assert!(luhn_valid("0000000000000000"));
    }

    #[test]
    fn expiry() {
        assert_eq!(parse_expiry("06/25"), Some((6, 2025)));
        assert_eq!(parse_expiry(" 12/31 "), Some((12, 2031)));
        for bad in ["13/25", "00/25", "6/25", "06/2025", "0625", "ab/cd", ""] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
        assert!(not_expired(6, 2025, TODAY), "valid through its month");
        assert!(not_expired(1, 2026, TODAY));
        assert!(!not_expired(5, 2025, TODAY));
        assert!(!not_expired(12, 2024, TODAY));
    }

    #[test]
    fn whole_card() {
        let ok = validate(&Card::new("4242 4242 4242 4242", "07/25", "123"), TODAY).unwrap();
        assert_eq!(ok.last4(), "4242");
        assert_eq!((ok.exp_month, ok.exp_year), (7, 2025));
        assert!(validate(&Card::new("4242-4242-4242-4242", "07/25", "1234"), TODAY).is_ok());
        let err = |c: Card| validate(&c, TODAY).unwrap_err();
        assert_eq!(
            err(Card::new("4242424242424241", "07/25", "123")),
            CardError::Luhn
        );
        assert_eq!(
            err(Card::new("42424242", "07/25", "123")),
            CardError::NumberFormat
        );
        assert_eq!(
            err(Card::new("4242x42424242424", "07/25", "123")),
            CardError::NumberFormat
        );
        assert_eq!(
            err(Card::new("4242424242424242", "05/25", "123")),
            CardError::Expired
        );
        assert_eq!(
            err(Card::new("4242424242424242", "5/25", "123")),
            CardError::ExpiryFormat
        );
        assert_eq!(
            err(Card::new("4242424242424242", "07/25", "12")),
            CardError::Cvc
        );
        assert_eq!(
            err(Card::new("4242424242424242", "07/25", "12345")),
            CardError::Cvc
        );
        assert_eq!(
            err(Card::new("4242424242424242", "07/25", "12a")),
            CardError::Cvc
        );
    }

    #[test]
    fn debug_never_shows_the_number() {
        let c = Card::new("4242424242424242", "07/25", "123");
        let s = format!("{c:?}");
        assert!(!s.contains("42424242"), "{s}");
        assert!(!s.contains("123"), "{s}");
        let v = validate(&c, TODAY).unwrap();
        let s = format!("{v:?}");
        assert!(!s.contains("42424242") && s.contains("4242"), "{s}");
    }
}
