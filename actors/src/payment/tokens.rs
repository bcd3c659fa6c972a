//! The simulated card processor's test tokens, after Stripe's: the token on
//! an order picks the outcome of its payment.

/// The token used when an order names none.
pub const DEFAULT: &str = "tok_visa";

/// Every token the simulator understands.
pub const KNOWN: [&str; 8] = [
    "tok_visa",
    "tok_visa_debit",
    "tok_mastercard",
    "tok_amex",
    "tok_chargeDeclined",
    "tok_chargeDeclinedInsufficientFunds",
    "tok_chargeDeclinedFraudulent",
    "tok_chargeDeclinedExpiredCard",
];

/// What the processor does with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The payment is authorized.
    Approve,
    /// The payment is declined with this decline code.
    Decline(&'static str),
}

/// The outcome for `token`, or `None` if the token is unknown.
pub fn outcome(token: &str) -> Option<Outcome> {
    Some(match token {
        "tok_visa" | "tok_visa_debit" | "tok_mastercard" | "tok_amex" => Outcome::Approve,
        "tok_chargeDeclined" => Outcome::Decline("card_declined"),
        "tok_chargeDeclinedInsufficientFunds" => Outcome::Decline("insufficient_funds"),
        "tok_chargeDeclinedFraudulent" => Outcome::Decline("fraudulent"),
        "tok_chargeDeclinedExpiredCard" => Outcome::Decline("expired_card"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_token_has_an_outcome_and_only_those() {
        for token in KNOWN {
            assert!(outcome(token).is_some(), "{token}");
        }
        assert_eq!(outcome(DEFAULT), Some(Outcome::Approve));
        assert_eq!(
            outcome("tok_chargeDeclined"),
            Some(Outcome::Decline("card_declined"))
        );
        assert_eq!(outcome("tok_nope"), None);
    }
}
