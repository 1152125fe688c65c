//! Generated programs: random orchestrations written from a seed, to test the shapes of code that
//! users write and the bundled examples do not.
//!
//! A [`Program`] is data — a list of [`Op`]s: activity calls (failing, retried), `when_all` and
//! `when_any` of calls, timers, a timer set beside other work and awaited after it, external
//! events (raced against timers or not), sub-orchestrations, entity signals and calls, critical
//! sections, continue-as-new and a failing end. One registered orchestration, `Gen`, interprets
//! any program with the ordinary [`OrchestrationContext`] API, so a program runs exactly as an
//! application's own code would.
//!
//! A program's output is a list of what its code observed. Everything it observes is independent
//! of delivery order and timing (a `when_any` races calls that answer alike, or an event against
//! a timer that cannot win first; entities are the program's own), so **every execution mode
//! must end a program with the same status and output**: that of the [`Harness`], which
//! [`expected`] computes. The simulator runs programs under its faults and modes and compares.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use durable_processor::context::{when_all, when_any, when_any2, ActivityContext, Either, EntityType, RetryPolicy};
use durable_processor::history::OrchestrationStatus;
use durable_processor::{Harness, InstanceId, OrchestrationContext, Registry};
use durable_schemas::{Failure, Payload};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The orchestration that interprets programs.
pub const GEN: &str = "Gen";
/// The entity a program counts in (keyed by the program's instance and a cell number).
pub const CELL: &str = "GenCell";
/// How long a timer waits that is raced against an event which is sent: it never wins first.
const NEVER_FIRST_MS: u64 = 3_600_000;

/// A generated orchestration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// What one generation does, in order.
    pub ops: Vec<Op>,
    /// Generations (the code continues as new until this many ran).
    pub generations: u32,
    /// End the last generation with a failure instead of the output.
    pub fail_at_end: bool,
}

/// One step of a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Call `GenWork(n)`; a failure is caught and observed when `fail`.
    Call { n: u32, fail: bool },
    /// Call `GenFlaky(n)`, which fails `fails` times before it answers, retried on timers.
    Retry { n: u32, fails: u32 },
    /// Wait on a timer.
    Sleep { ms: u64 },
    /// Set a timer, do `ops`, then wait for the timer.
    TimerBeside { ms: u64, ops: Vec<Op> },
    /// `when_all` of calls.
    All { ns: Vec<u32> },
    /// `when_any` of `width` calls that answer alike.
    Any { n: u32, width: u32 },
    /// Wait for external event `name` (the client raises it).
    Event { name: String },
    /// Race external event `name` against a timer of `ms`: the client raises it when `sent`
    /// (then the timer is an hour and cannot win first), else the timer wins.
    EventOrTimer { name: String, sent: bool, ms: u64 },
    /// Call a sub-orchestration running `program`.
    Sub { program: Box<Program> },
    /// Signal `add n` to cell `cell`.
    Signal { cell: u8, n: i64 },
    /// Call `add n` on cell `cell` and observe the value.
    CallCell { cell: u8, n: i64 },
    /// Lock cells, read them all at once, add `n` to the first by a signal, release.
    Locked { cells: Vec<u8>, n: i64 },
}

/// A program's input in each generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenInput {
    /// The program.
    pub program: Program,
    /// Which generation this is.
    pub generation: u32,
    /// What the generations before observed.
    pub seen: Vec<String>,
}

/// The state of a cell.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// Its value.
    pub value: i64,
}

/// Add the interpreter, its activities and its entity to `registry`.
pub fn register(registry: Registry) -> Registry {
    registry
        .orchestration(GEN, interpret)
        .activity("GenWork", |(n, fail): (u32, bool)| async move {
            if fail {
                Err(Failure::new("GenFailure", format!("work {n} fails")))
            } else {
                Ok(u64::from(n) * 3 + 1)
            }
        })
        .activity_with_context("GenFlaky", |ctx: ActivityContext, (n, fails): (u32, u32)| async move {
            if ctx.attempt <= fails {
                Err(Failure::new("Transient", format!("attempt {} of {n} fails", ctx.attempt)))
            } else {
                Ok(u64::from(n) + 7)
            }
        })
        .entity(
            CELL,
            EntityType::new()
                .operation("add", |c: &mut Cell, _, n: i64| {
                    c.value += n;
                    Ok(c.value)
                })
                .operation("get", |c: &mut Cell, _, (): ()| Ok(c.value)),
        )
}

/// The cell `cell` of the instance `ctx` runs.
fn cell(ctx: &OrchestrationContext, cell: u8) -> InstanceId {
    InstanceId::entity(CELL, format!("{}/{cell}", ctx.instance_id().key()))
}

type Step<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

/// The `Gen` orchestration.
async fn interpret(ctx: OrchestrationContext, input: GenInput) -> Result<Vec<String>, Failure> {
    let GenInput { program, generation, mut seen } = input;
    run_ops(&ctx, &program.ops, generation, &mut seen).await?;
    if generation + 1 < program.generations {
        let next = GenInput { program: program.clone(), generation: generation + 1, seen };
        ctx.continue_as_new(next).await;
        unreachable!("continue_as_new does not return");
    }
    if program.fail_at_end {
        return Err(Failure::new("GenFail", format!("failed after {}", seen.join(" "))));
    }
    Ok(seen)
}

fn run_ops<'a>(ctx: &'a OrchestrationContext, ops: &'a [Op], generation: u32, seen: &'a mut Vec<String>) -> Step<'a> {
    Box::pin(async move {
        for op in ops {
            run_op(ctx, op, generation, seen).await?;
        }
        Ok(())
    })
}

fn run_op<'a>(ctx: &'a OrchestrationContext, op: &'a Op, generation: u32, seen: &'a mut Vec<String>) -> Step<'a> {
    Box::pin(async move {
        match op {
            Op::Call { n, fail } => match ctx.call_activity::<_, u64>("GenWork", (*n, *fail)).await {
                Ok(v) => seen.push(format!("call={v}")),
                Err(f) => seen.push(format!("call!{}", f.kind)),
            },
            Op::Retry { n, fails } => {
                let policy = RetryPolicy::new(fails + 1, Duration::from_secs(1)).only_kinds(["Transient"]);
                let v: u64 = ctx.call_activity_with_retry("GenFlaky", (*n, *fails), policy).await?;
                seen.push(format!("retry={v}"));
            }
            Op::Sleep { ms } => {
                ctx.create_timer_after(Duration::from_millis(*ms)).await;
                seen.push("slept".into());
            }
            Op::TimerBeside { ms, ops } => {
                let timer = ctx.create_timer_after(Duration::from_millis(*ms));
                run_ops(ctx, ops, generation, seen).await?;
                timer.await;
                seen.push("timer".into());
            }
            Op::All { ns } => {
                let calls = ns.iter().map(|n| ctx.call_activity::<_, u64>("GenWork", (*n, false))).collect();
                let mut sum = 0;
                for r in when_all(calls).await {
                    sum += r?;
                }
                seen.push(format!("all={sum}"));
            }
            Op::Any { n, width } => {
                let calls = (0..*width).map(|_| ctx.call_activity::<_, u64>("GenWork", (*n, false))).collect();
                let (_, v) = when_any(calls).await;
                seen.push(format!("any={}", v?));
            }
            Op::Event { name } => {
                let v: u64 = ctx.wait_for_event(&format!("{name}@{generation}")).await?;
                seen.push(format!("event={v}"));
            }
            Op::EventOrTimer { name, sent, ms } => {
                let wait = if *sent { NEVER_FIRST_MS } else { *ms };
                let event = ctx.wait_for_event::<u64>(&format!("{name}@{generation}"));
                match when_any2(event, ctx.create_timer_after(Duration::from_millis(wait))).await {
                    Either::Left(v) => seen.push(format!("event={}", v?)),
                    Either::Right(()) => seen.push("timeout".into()),
                }
            }
            Op::Sub { program } => {
                let input = GenInput { program: (**program).clone(), generation: 0, seen: Vec::new() };
                match ctx.call_sub_orchestration::<_, Vec<String>>(GEN, input).await {
                    Ok(out) => seen.push(format!("sub[{}]", out.join(" "))),
                    Err(f) => seen.push(format!("sub!{}", f.kind)),
                }
            }
            Op::Signal { cell: c, n } => ctx.signal_entity(&cell(ctx, *c), "add", *n)?,
            Op::CallCell { cell: c, n } => {
                let v: i64 = ctx.call_entity(&cell(ctx, *c), "add", *n).await?;
                seen.push(format!("cell={v}"));
            }
            Op::Locked { cells, n } => {
                let ids: Vec<InstanceId> = cells.iter().map(|c| cell(ctx, *c)).collect();
                let guard = ctx.lock(&ids).await?;
                let reads = ids.iter().map(|id| ctx.call_entity::<_, i64>(id, "get", ())).collect();
                let mut values = Vec::new();
                for r in when_all(reads).await {
                    values.push(r?.to_string());
                }
                ctx.signal_entity(&ids[0], "add", *n)?;
                guard.release();
                seen.push(format!("locked={}", values.join(",")));
            }
        }
        Ok(())
    })
}

/// Limits of what [`program`] writes.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Nesting left for sub-orchestrations and timers beside work.
    pub depth: u32,
    /// Whether the program may wait for external events (only top-level programs: the client
    /// knows their ids).
    pub events: bool,
}

/// A random program.
pub fn program(rng: &mut impl Rng, shape: Shape) -> Program {
    let len = rng.gen_range(1..=6);
    let mut events = 0;
    let ops = (0..len).map(|_| op(rng, shape, &mut events)).collect();
    let generations = if shape.events && rng.gen_ratio(1, 5) { 2 } else { 1 };
    Program { ops, generations, fail_at_end: rng.gen_ratio(1, 12) }
}

fn op(rng: &mut impl Rng, shape: Shape, events: &mut u32) -> Op {
    let n = rng.gen_range(0..100);
    loop {
        return match rng.gen_range(0..13) {
            0 => Op::Call { n, fail: rng.gen_ratio(1, 5) },
            1 => Op::Retry { n, fails: rng.gen_range(0..=2) },
            2 => Op::Sleep { ms: rng.gen_range(1..=5_000) },
            3 if shape.depth > 0 => {
                let inner = Shape { depth: shape.depth - 1, events: shape.events };
                let ops = (0..rng.gen_range(1..=3)).map(|_| op(rng, inner, events)).collect();
                Op::TimerBeside { ms: rng.gen_range(1..=5_000), ops }
            }
            4 => Op::All { ns: (0..rng.gen_range(1..=4)).map(|_| rng.gen_range(0..100)).collect() },
            5 => Op::Any { n, width: rng.gen_range(2..=3) },
            6 if shape.events => {
                *events += 1;
                Op::Event { name: format!("e{events}") }
            }
            7 if shape.events => {
                *events += 1;
                Op::EventOrTimer { name: format!("e{events}"), sent: rng.gen_bool(0.5), ms: rng.gen_range(1..=5_000) }
            }
            8 if shape.depth > 0 => {
                let inner = Shape { depth: shape.depth - 1, events: false };
                Op::Sub { program: Box::new(program(rng, inner)) }
            }
            9 => Op::Signal { cell: rng.gen_range(0..3), n: rng.gen_range(1..10) },
            10 => Op::CallCell { cell: rng.gen_range(0..3), n: rng.gen_range(1..10) },
            11 | 12 => {
                let first = rng.gen_range(0..3u8);
                let mut cells = vec![first];
                if rng.gen_bool(0.5) {
                    cells.push((first + rng.gen_range(1..3)) % 3);
                }
                Op::Locked { cells, n: rng.gen_range(1..10) }
            }
            _ => continue,
        };
    }
}

/// The external events a client raises for a top-level program, in order: `(name, value)`.
pub fn raises(program: &Program) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for generation in 0..program.generations {
        collect_raises(&program.ops, generation, &mut out);
    }
    out
}

fn collect_raises(ops: &[Op], generation: u32, out: &mut Vec<(String, u64)>) {
    for op in ops {
        match op {
            Op::Event { name } | Op::EventOrTimer { name, sent: true, .. } => {
                let value = 1000 + out.len() as u64;
                out.push((format!("{name}@{generation}"), value));
            }
            Op::TimerBeside { ops, .. } => collect_raises(ops, generation, out),
            _ => {}
        }
    }
}

/// The input that starts `program`.
pub fn start_input(program: &Program) -> Payload {
    let input = GenInput { program: program.clone(), generation: 0, seen: Vec::new() };
    Payload::json(&input).expect("programs serialize")
}

/// How a program ended, as the simulator compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Completed with this output.
    Completed(serde_json::Value),
    /// Failed with this failure kind and message.
    Failed(String, String),
    /// Anything else (the status word).
    Other(String),
}

impl Ending {
    /// The ending of an orchestration with `status` (`None`: no record).
    pub fn of(status: Option<&OrchestrationStatus>) -> Self {
        match status {
            Some(OrchestrationStatus::Completed { output }) => {
                Ending::Completed(output.decode().unwrap_or(serde_json::Value::Null))
            }
            Some(OrchestrationStatus::Failed { failure }) => {
                Ending::Failed(failure.kind.clone(), failure.message.clone())
            }
            Some(other) => Ending::Other(other.word().to_owned()),
            None => Ending::Other("missing".into()),
        }
    }
}

/// What the [`Harness`] — every event delivered in order, timers fired when nothing else is
/// left — makes of `program` started as `key`: its ending and its cells' values.
pub fn expected(program: &Program, key: &str) -> (Ending, Vec<(String, i64)>) {
    let mut h = Harness::new(register(Registry::new()));
    let start = h.start(GEN, key, GenInput { program: program.clone(), generation: 0, seen: Vec::new() });
    let id = start.target.clone();
    h.deliver(start);
    for (name, value) in raises(program) {
        let e = h.raise(&id, &name, value);
        h.deliver(e);
    }
    h.run();
    let ending = Ending::of(h.status(&id));
    (ending, cells(key, |id| h.entity_state::<Cell>(id).map(|c| c.value)))
}

/// The values of the top-level cells of the program started as `key` (cells that exist).
pub fn cells(key: &str, value: impl Fn(&InstanceId) -> Option<i64>) -> Vec<(String, i64)> {
    (0..3u8)
        .filter_map(|c| {
            let id = InstanceId::entity(CELL, format!("{key}/{c}"));
            value(&id).map(|v| (id.canonical(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// The Harness runs generated programs to an end (no program hangs in the reference).
    #[test]
    fn the_harness_ends_every_generated_program() {
        for seed in 0..300 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let p = program(&mut rng, Shape { depth: 2, events: true });
            let (ending, _) = expected(&p, &format!("g{seed}"));
            assert!(matches!(ending, Ending::Completed(_) | Ending::Failed(..)), "seed {seed}: {ending:?} for {p:?}");
        }
    }

    /// The program, written as data, completes in the Harness with both greetings seen.
    #[test]
    fn a_timer_beside_a_call_completes_in_the_harness() {
        let p = Program {
            ops: vec![
                Op::Call { n: 1, fail: false },
                Op::TimerBeside { ms: 1000, ops: vec![Op::Call { n: 2, fail: false }] },
            ],
            generations: 1,
            fail_at_end: false,
        };
        let (ending, _) = expected(&p, "beside");
        assert_eq!(ending, Ending::Completed(serde_json::json!(["call=4", "call=7", "timer"])));
    }
}
