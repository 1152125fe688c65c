//! # Critical sections: the lock protocol
//!
//! An orchestration calls [`OrchestrationContext::lock`](crate::OrchestrationContext::lock) with
//! a set of entities, works on them alone, and releases them. This page is the protocol: the
//! messages, their order, what each side stores, and why it can neither deadlock nor leak a lock.
//!
//! ## Messages
//!
//! | message | from → to | meaning |
//! | --- | --- | --- |
//! | `LockRequest{owner, correlation, participants, position}` | owner → `participants[0]`, then each participant → the next | "lock yourself for `owner`, then pass it on" |
//! | `LockGranted{correlation, participants}` | last participant → owner | the whole set is held |
//! | `WithLock{owner, participants}` around an `EntityOperation` | owner → participant | an operation from inside the critical section |
//! | `LockRelease{owner, correlation}` | owner → every participant | leave the critical section |
//!
//! `participants` are canonical entity ids, **sorted**; `correlation` is the owner's
//! `generation.slot` of the `lock` command, so a lock is identified by `(owner, correlation)`.
//!
//! ## What each side stores
//!
//! - The **owner** (an orchestration) keeps `HeldLocks{correlation, participants, granted}` in its
//!   history from the moment it requests the lock until it releases it.
//! - Each **entity** keeps `lock: Option<EntityLock{owner, correlation}>` and a FIFO `queue` of
//!   envelopes that arrived while someone else held the lock (operations and lock requests).
//!
//! ## Order of events
//!
//! 1. The owner issues the `lock` command: `LockRequest(position 0)` goes to the smallest id.
//! 2. An entity receiving `LockRequest(position i)`:
//!    - unlocked → takes the lock for `(owner, correlation)`, sends `LockRequest(i+1)` to the next
//!      participant, or `LockGranted` to the owner if it is the last;
//!    - locked by this same `(owner, correlation)` → nothing (a duplicate);
//!    - locked by anyone else → queues the request.
//! 3. An operation arriving at a locked entity runs only if it carries `WithLock` of the holder;
//!    anything else queues, in arrival order.
//! 4. The owner's code gets its `LockGuard` when `LockGranted` is delivered. Inside, it may call
//!    and signal only the participants (those messages carry `WithLock`); calling or signalling
//!    another entity, requesting a second lock set or starting a sub-orchestration is a
//!    `LockViolation` failure returned to the code.
//! 5. Release: `LockRelease` to every participant when the guard is released or dropped, when the
//!    lock future is dropped before the grant (a timeout), and — from the stored `HeldLocks`,
//!    even when the code is not running — when the orchestration completes, fails, panics,
//!    diverges (nondeterminism), is terminated or continues as new.
//! 6. An entity receiving `LockRelease(owner, correlation)`: if that is its holder, it unlocks
//!    and re-handles its queue in order (the first queued lock request takes the lock again,
//!    queued operations from others wait again behind it); otherwise it removes a queued
//!    request of that `(owner, correlation)` if it has one.
//! 7. An owner receiving a `LockGranted` it does not wait for — it finished, it withdrew the
//!    request, it moved to another generation, or it never existed — answers with
//!    `LockRelease` to every participant named in the grant.
//!
//! ## Why it cannot deadlock
//!
//! Every owner acquires its set one entity at a time in the same global order (sorted ids), and
//! holds a prefix of its set while it waits for the next entity. If owner O waits for entity E,
//! E is held by an owner P that holds only entities `≤ E` of its own set and waits (if at all)
//! for an entity `> E`. Every edge of the wait-for graph therefore points to a strictly larger
//! entity, so the graph has no cycle. Queued operations hold nothing. Inside a section an owner
//! can wait only on its own participants (served by its lock), on activities and timers (which
//! need no locks) or on external events; the one way to wait on another lock holder — a
//! sub-orchestration — is refused.
//!
//! ## Why it cannot leak
//!
//! A lock is held for `(owner, correlation)` until a matching `LockRelease` arrives, and every way
//! out of the owner's critical section sends one (step 5) from state that is committed together
//! with the decision to leave. Releases are plain events: they are re-sent after a crash and
//! deduplicated like any other. The one race left is a request still travelling along the chain
//! when the release overtakes it (the release finds nothing, the request then locks the entity
//! for an owner that no longer wants it). That request still completes the chain and ends in a
//! `LockGranted` to the owner, which answers with a release (step 7): a lock can outlive its
//! owner's interest only for the length of that round trip. An owner that is gone entirely
//! answers the same way, since its record still exists (records are never deleted).
//!
//! ## Checked by
//!
//! The harness tests in `engine/tests/locks.rs` (racing transfers in 200 delivery orders, a
//! holder that fails or is terminated mid-section, a duplicated request, a release that overtakes
//! the request, rule violations, continue-as-new) and the simulator's bank workload (money
//! conserved, no negative balance, no lock or queued work left at quiescence, every transfer
//! finished exactly once, balances explained exactly by the transfers).
