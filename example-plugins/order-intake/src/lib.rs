//! The producer half of the event example (`order-intake` → `order-audit`).
//!
//! It demonstrates publishing onto the host's event bus with
//! `events::publish_json`, which only works for topics the operator granted
//! (policy `events = { publish = ["orders.*"] }`); without the grant `place`
//! fails with `denied`.
//!
//! - `place` with `{"order_id": "A-1", "item": "teapot", "quantity": 2,
//!   "flaky": false}` (`flaky` optional, default `false`) checks the order
//!   (`order_id` and `item` not blank, `quantity` an integer `>= 1`), publishes
//!   it on `orders.created` as `{"order_id", "item", "quantity", "flaky"}`
//!   (`flaky` always present; other fields are not passed on) and answers
//!   `{"accepted": true, "order_id": "A-1"}`.
//!
//! `flaky` asks `order-audit` to answer `retry-after` twice before it stores
//! the order, which shows redelivery.
//!
//! - `price` with `{"item": "teapot", "quantity": 2}` answers
//!   `{"item", "quantity", "unit_cents", "total_cents"}` from the catalogue
//!   below (an unknown item or a quantity below 1 is `invalid-input`). It is
//!   declared pure (`.pure()`): its answer depends on the request alone, so
//!   the host answers a repeated request from its response cache without
//!   running the plugin, and would deny it key-value writes and publishing.

use capsule_guest::{Plugin, PluginError, Request, Response, events, export_plugin, log};
use serde::{Deserialize, Serialize};

/// The topic every accepted order is published on.
const TOPIC: &str = "orders.created";

/// An order, as `place` takes it and as it is published.
#[derive(Deserialize, Serialize)]
struct Order {
    order_id: String,
    item: String,
    quantity: i64,
    #[serde(default)]
    flaky: bool,
}

#[derive(Serialize)]
struct Accepted {
    accepted: bool,
    order_id: String,
}

/// Every problem with `order`, joined, or `None` if it is acceptable.
fn problems(order: &Order) -> Option<String> {
    let mut problems = Vec::new();
    if order.order_id.trim().is_empty() {
        problems.push("`order_id` must not be empty");
    }
    if order.item.trim().is_empty() {
        problems.push("`item` must not be empty");
    }
    if order.quantity < 1 {
        problems.push("`quantity` must be at least 1");
    }
    (!problems.is_empty()).then(|| format!("invalid order: {}", problems.join("; ")))
}

fn place(order: Order) -> Result<Accepted, PluginError> {
    if let Some(problems) = problems(&order) {
        log::info!("refused order {:?}: {problems}", order.order_id);
        return Err(PluginError::InvalidInput(problems));
    }
    events::publish_json(TOPIC, &order)?;
    log::info!(
        "order {} ({} x {}) published on {TOPIC}",
        order.order_id,
        order.quantity,
        order.item
    );
    Ok(Accepted {
        accepted: true,
        order_id: order.order_id,
    })
}

/// What `price` takes.
#[derive(Deserialize)]
struct PriceIn {
    item: String,
    quantity: i64,
}

/// What `price` answers.
#[derive(Serialize)]
struct PriceOut {
    item: String,
    quantity: i64,
    unit_cents: i64,
    total_cents: i64,
}

/// The catalogue: item and unit price in cents.
const CATALOGUE: &[(&str, i64)] = &[("teapot", 2_500), ("cup", 800), ("saucer", 450)];

/// The unit and total price of `quantity` of `item`.
fn quote(item: &str, quantity: i64) -> Result<(i64, i64), PluginError> {
    let Some(&(_, unit_cents)) = CATALOGUE.iter().find(|(name, _)| *name == item) else {
        return Err(PluginError::InvalidInput(format!("no price for `{item}`")));
    };
    if quantity < 1 {
        return Err(PluginError::InvalidInput(
            "`quantity` must be at least 1".into(),
        ));
    }
    let total_cents = unit_cents
        .checked_mul(quantity)
        .ok_or_else(|| PluginError::InvalidInput("`quantity` is too large".into()))?;
    Ok((unit_cents, total_cents))
}

fn price(input: PriceIn) -> Result<PriceOut, PluginError> {
    let (unit_cents, total_cents) = quote(&input.item, input.quantity)?;
    log::info!(
        "priced {} x {} at {total_cents} cents",
        input.quantity,
        input.item
    );
    Ok(PriceOut {
        item: input.item,
        quantity: input.quantity,
        unit_cents,
        total_cents,
    })
}

struct OrderIntake;

impl Plugin for OrderIntake {
    fn handle(request: Request) -> Result<Response, PluginError> {
        log::info!("handling `{}`", request.operation);
        request
            .dispatch()
            .json("place", place)
            .about("Checks an order and publishes it on orders.created")
            .json("price", price)
            .about("Prices a quantity of a catalogue item")
            .pure()
            .finish()
    }
}

export_plugin!(OrderIntake);

#[cfg(test)]
mod tests {
    use super::*;

    fn order(json: &str) -> Order {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn flaky_defaults_to_false_and_is_always_published() {
        let placed = order(r#"{"order_id": "A-1", "item": "teapot", "quantity": 2, "x": 1}"#);
        assert!(problems(&placed).is_none());
        assert_eq!(
            serde_json::to_value(&placed).unwrap(),
            serde_json::json!({"order_id": "A-1", "item": "teapot", "quantity": 2, "flaky": false})
        );
    }

    #[test]
    fn prices_come_from_the_catalogue() {
        assert_eq!(quote("cup", 3).unwrap(), (800, 2_400));
        assert!(quote("anvil", 1).is_err());
        assert!(quote("cup", 0).is_err());
        assert!(quote("cup", i64::MAX).is_err());
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = order(r#"{"order_id": " ", "item": "", "quantity": 0}"#);
        assert_eq!(
            problems(&bad).unwrap(),
            "invalid order: `order_id` must not be empty; `item` must not be empty; \
             `quantity` must be at least 1"
        );
        assert!(
            serde_json::from_str::<Order>(r#"{"order_id": "A", "item": "b", "quantity": 1.5}"#)
                .is_err()
        );
    }
}
