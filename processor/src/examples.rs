//! The bundled examples (the application layer): hello-sequence, fan-out/fan-in, the counter
//! entity, an approval flow that mixes retries, entities, external events, timers and a
//! sub-orchestration, a continue-as-new ticker, and the Bank (`Account` entities and a `Transfer`
//! orchestration with a critical section). [`register`] adds them all to a registry.

use std::time::Duration;

use durable_schemas::Failure;
use serde::{Deserialize, Serialize};

use crate::context::{when_all, when_any2, Either, EntityType, OrchestrationContext, RetryPolicy};
use crate::id::InstanceId;
use crate::registry::Registry;

/// The cities `HelloSequence` greets when given none.
pub const CITIES: [&str; 5] = ["Tokyo", "Seattle", "London", "Paris", "Cairo"];

/// `HelloSequence`: call `SayHello` once per city, in order.
pub async fn hello_sequence(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, Failure> {
    let cities = if cities.is_empty() { CITIES.iter().map(|c| c.to_string()).collect() } else { cities };
    let mut greetings = Vec::with_capacity(cities.len());
    for city in cities {
        greetings.push(ctx.call_activity::<_, String>("SayHello", city).await?);
    }
    Ok(greetings)
}

/// `FanOut`: call `Square` for 0..n at once, then sum the results.
pub async fn fan_out(ctx: OrchestrationContext, n: u64) -> Result<u64, Failure> {
    let calls = (0..n).map(|i| ctx.call_activity::<_, u64>("Square", i)).collect();
    let mut sum = 0;
    for result in when_all(calls).await {
        sum += result?;
    }
    Ok(sum)
}

/// The expected result of `FanOut` for `n`.
pub fn fan_out_expected(n: u64) -> u64 {
    (0..n).map(|i| i * i).sum()
}

/// State of the `Counter` entity.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counter {
    /// The count.
    pub value: i64,
}

/// The `Counter` entity: `add(n)`, `get()`, `reset()`, `delete()`.
pub fn counter() -> EntityType<Counter> {
    EntityType::new()
        .operation("add", |s: &mut Counter, _, n: i64| {
            s.value += n;
            Ok(s.value)
        })
        .operation("get", |s: &mut Counter, _, (): ()| Ok(s.value))
        .operation("reset", |s: &mut Counter, _, (): ()| {
            s.value = 0;
            Ok(())
        })
        .operation("delete", |_: &mut Counter, ctx, (): ()| {
            ctx.delete();
            Ok(())
        })
}

/// Input of `Approval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalInput {
    /// Key of the counter entity this approval adds to.
    pub counter: String,
    /// How much to add.
    pub amount: i64,
}

/// `Approval`: a flaky check retried on durable timers, a signal and a call to a counter, an
/// external `approve` event raced against a one-hour timer, and a `HelloSequence` child.
pub async fn approval(ctx: OrchestrationContext, input: ApprovalInput) -> Result<String, Failure> {
    let policy = RetryPolicy::new(5, Duration::from_secs(1)).only_kinds(["Transient"]);
    let checked: String = ctx.call_activity_with_retry("Flaky", &input.counter, policy).await?;
    let counter = InstanceId::entity("Counter", input.counter.clone());
    ctx.signal_entity(&counter, "add", input.amount)?;
    ctx.set_custom_status(&"waiting for approval");
    let approved =
        match when_any2(ctx.wait_for_event::<bool>("approve"), ctx.create_timer_after(Duration::from_secs(3600))).await
        {
            Either::Left(answer) => answer?,
            Either::Right(()) => false,
        };
    let value: i64 = ctx.call_entity(&counter, "get", ()).await?;
    let cities = vec![input.counter.clone(), "Oslo".to_owned()];
    let hello: Vec<String> = ctx.call_sub_orchestration("HelloSequence", cities).await?;
    ctx.set_custom_status(&"done");
    Ok(format!("{checked}|approved={approved}|value={value}|{}", hello.join(",")))
}

/// The expected output of `Approval` when the `approve` event is `true` and nothing else adds
/// to its counter.
pub fn approval_expected(input: &ApprovalInput) -> String {
    format!("ok:{}|approved=true|value={}|Hello {}!,Hello Oslo!", input.counter, input.amount, input.counter)
}

/// `Ticker`: each generation waits for one `tick` event, then continues as new, until `target`
/// generations have passed; returns the number of ticks seen.
pub async fn ticker(ctx: OrchestrationContext, (seen, target): (u32, u32)) -> Result<u32, Failure> {
    let _: u32 = ctx.wait_for_event("tick").await?;
    if seen + 1 < target {
        ctx.continue_as_new((seen + 1, target)).await;
    }
    Ok(seen + 1)
}

/// State of the `Account` entity (the Bank example).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Account {
    /// Who owns it (searchable once projected).
    pub owner: String,
    /// Balance in whole units; never below zero.
    pub balance: i64,
}

/// The `Account` entity: `open(owner)`, `deposit(n)`, `withdraw(n)` (refuses overdrafts with
/// kind `Overdraft`), `balance()`.
pub fn account() -> EntityType<Account> {
    EntityType::new()
        .operation("open", |a: &mut Account, _, owner: String| {
            a.owner = owner;
            Ok(())
        })
        .operation("deposit", |a: &mut Account, _, amount: i64| {
            if amount < 0 {
                return Err(Failure::new("InvalidAmount", format!("cannot deposit {amount}")));
            }
            a.balance += amount;
            Ok(a.balance)
        })
        .operation("withdraw", |a: &mut Account, ctx, amount: i64| {
            if amount < 0 || amount > a.balance {
                return Err(Failure::new(
                    "Overdraft",
                    format!("{} holds {}, cannot withdraw {amount}", ctx.id(), a.balance),
                ));
            }
            a.balance -= amount;
            Ok(a.balance)
        })
        .operation("balance", |a: &mut Account, _, (): ()| Ok(a.balance))
}

/// Input of `Transfer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferInput {
    /// Key of the account to take from.
    pub from: String,
    /// Key of the account to pay into.
    pub to: String,
    /// How much.
    pub amount: i64,
}

/// Result of `Transfer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferOutcome {
    /// The money moved.
    Transferred,
    /// The source held too little; nothing moved.
    Refused {
        /// The source balance seen inside the critical section.
        balance: i64,
    },
}

/// `Transfer`: lock both accounts, read both balances, refuse an overdraft, move the money.
///
/// The two balances are read at once (one round trip inside the section, not two). The
/// withdrawal and the deposit are sent as two signals in the same step (under the lock), so
/// they are committed together: a transfer terminated mid-section has moved either nothing or
/// everything.
pub async fn transfer(ctx: OrchestrationContext, input: TransferInput) -> Result<TransferOutcome, Failure> {
    let from = InstanceId::entity("Account", input.from.clone());
    let to = InstanceId::entity("Account", input.to.clone());
    if from == to || input.amount <= 0 {
        return Err(Failure::new("InvalidTransfer", format!("cannot move {} from {from} to {to}", input.amount)));
    }
    let guard = ctx.lock(&[from.clone(), to.clone()]).await?;
    let reads = when_all(vec![ctx.call_entity::<_, i64>(&from, "balance", ()), ctx.call_entity(&to, "balance", ())]);
    let mut balances = reads.await.into_iter();
    let balance = balances.next().expect("two reads")?;
    let _destination = balances.next().expect("two reads")?;
    if balance < input.amount {
        return Ok(TransferOutcome::Refused { balance });
    }
    ctx.signal_entity(&from, "withdraw", input.amount)?;
    ctx.signal_entity(&to, "deposit", input.amount)?;
    guard.release();
    Ok(TransferOutcome::Transferred)
}

/// Register every example handler.
pub fn register(registry: Registry) -> Registry {
    registry
        .orchestration("HelloSequence", hello_sequence)
        .orchestration("FanOut", fan_out)
        .orchestration("Approval", approval)
        .orchestration("Ticker", ticker)
        .activity("SayHello", |city: String| async move { Ok::<_, Failure>(format!("Hello {city}!")) })
        .activity("Square", |i: u64| async move { Ok::<_, Failure>(i * i) })
        .activity_with_context("Flaky", |ctx: crate::context::ActivityContext, key: String| async move {
            if ctx.attempt < 3 {
                Err(Failure::new("Transient", format!("attempt {} of {key} fails", ctx.attempt)))
            } else {
                Ok(format!("ok:{key}"))
            }
        })
        .orchestration("Transfer", transfer)
        .entity("Counter", counter())
        .entity("Account", account())
}
