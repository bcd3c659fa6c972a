//! Who a request or a WebSocket connection acts for, once its token is
//! verified (verification itself is at the HTTP edge, `shop::auth`), and
//! what that caller may see.

use serde::{Deserialize, Serialize};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A shopper: their own orders only.
    Customer,
    /// An operator: every order, product writes, admin routes.
    Admin,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The customer id (the token's `sub`).
    pub subject: String,
    /// Customer or admin.
    pub role: Role,
}

impl Principal {
    /// Whether this caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this caller may see the orders of `customer_id`.
    pub fn may_see(&self, customer_id: &str) -> bool {
        self.is_admin() || self.subject == customer_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_see_their_own_orders_and_admins_every_order() {
        let alice = Principal {
            subject: "alice".into(),
            role: Role::Customer,
        };
        let root = Principal {
            subject: "ops".into(),
            role: Role::Admin,
        };
        assert!(alice.may_see("alice"));
        assert!(!alice.may_see("bob"));
        assert!(root.may_see("bob"));
        assert_eq!(serde_json::to_string(&Role::Admin).unwrap(), "\"admin\"");
    }
}
