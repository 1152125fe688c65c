//! A shop on Durable, as a user writes it: a `Stock` entity per product, a `Charge` activity
//! (the side effect, e.g. a payment provider), and a `PlaceOrder` orchestration that reserves
//! stock, charges, and puts the stock back if the charge fails.
//!
//! `src/main.rs` is the whole processor binary of this app; `register` is all it needs.

use durable_processor::{EntityType, InstanceId, OrchestrationContext, Registry};
use durable_schemas::Failure;
use serde::{Deserialize, Serialize};

/// State of a `Stock` entity (key = product id).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stock {
    /// Units on the shelf.
    pub available: u32,
}

/// `Stock`: `restock(n)`, `reserve(n)` (fails with kind `OutOfStock`), `release(n)`.
pub fn stock() -> EntityType<Stock> {
    EntityType::new()
        .operation("restock", |s: &mut Stock, _, n: u32| {
            s.available += n;
            Ok(s.available)
        })
        .operation("reserve", |s: &mut Stock, ctx, n: u32| {
            if n > s.available {
                return Err(Failure::new("OutOfStock", format!("{} has {} left, {n} wanted", ctx.id(), s.available)));
            }
            s.available -= n;
            Ok(s.available)
        })
        .operation("release", |s: &mut Stock, _, n: u32| {
            s.available += n;
            Ok(s.available)
        })
}

/// An order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// Product id (the `Stock` key).
    pub product: String,
    /// Units.
    pub quantity: u32,
    /// Card to charge; a card starting with `declined` is refused by `Charge`.
    pub card: String,
}

/// `PlaceOrder`: reserve, charge, and compensate when the charge fails.
pub async fn place_order(ctx: OrchestrationContext, order: Order) -> Result<String, Failure> {
    let stock = InstanceId::entity("Stock", order.product.clone());
    let _left: u32 = ctx.call_entity(&stock, "reserve", order.quantity).await?;
    match ctx.call_activity::<_, String>("Charge", order.card.clone()).await {
        Ok(receipt) => Ok(receipt),
        Err(failure) => {
            ctx.signal_entity(&stock, "release", order.quantity)?;
            Err(failure)
        }
    }
}

/// Everything this app registers.
pub fn register(registry: Registry) -> Registry {
    registry.entity("Stock", stock()).orchestration("PlaceOrder", place_order).activity(
        "Charge",
        |card: String| async move {
            if card.starts_with("declined") {
                Err(Failure::new("CardDeclined", format!("card {card} was declined")))
            } else {
                Ok(format!("receipt-for-{card}"))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use durable_processor::Harness;

    use super::*;

    fn shop() -> Harness {
        let mut h = Harness::new(register(Registry::new()));
        let restock = h.signal(&InstanceId::entity("Stock", "mug"), "restock", 3u32);
        h.deliver(restock);
        h
    }

    #[test]
    fn an_order_reserves_stock_and_charges() {
        let mut h = shop();
        let order = h.start("PlaceOrder", "o1", Order { product: "mug".into(), quantity: 2, card: "visa".into() });
        let id = order.target.clone();
        h.deliver(order);
        h.run();
        assert_eq!(h.output::<String>(&id).as_deref(), Some("receipt-for-visa"));
        assert_eq!(h.entity_state::<Stock>(&InstanceId::entity("Stock", "mug")), Some(Stock { available: 1 }));
    }

    #[test]
    fn a_declined_card_puts_the_stock_back() {
        let mut h = shop();
        let order =
            h.start("PlaceOrder", "o2", Order { product: "mug".into(), quantity: 2, card: "declined-1".into() });
        let id = order.target.clone();
        h.deliver(order);
        h.run();
        assert_eq!(h.output::<String>(&id), None, "the order failed");
        assert_eq!(h.entity_state::<Stock>(&InstanceId::entity("Stock", "mug")), Some(Stock { available: 3 }));
    }

    #[test]
    fn an_order_for_more_than_the_stock_fails_without_charging() {
        let mut h = shop();
        let order = h.start("PlaceOrder", "o3", Order { product: "mug".into(), quantity: 5, card: "visa".into() });
        let id = order.target.clone();
        h.deliver(order);
        h.run();
        let status = h.record(&id).and_then(|r| r.orchestration()).map(|o| o.status.word());
        assert_eq!(status, Some("failed"));
        assert_eq!(h.entity_state::<Stock>(&InstanceId::entity("Stock", "mug")), Some(Stock { available: 3 }));
    }
}
