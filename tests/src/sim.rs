//! A deterministic simulator of the whole commit protocol, with faults.
//!
//! The world: a partitioned log of encoded envelopes (Kafka), a [`MemoryStore`] (Redis, through
//! the same [`Store`] trait), a consumer group of workers, and clients. Each worker processes a
//! partition in batches, and each batch goes through phases — fetch, load, compute, commit,
//! emit, store offset — that a seeded scheduler interleaves with everything else:
//!
//! - **duplicate deliveries**: a produce appends a record twice; a client retries a send;
//! - **reordering across instances**: partitions advance independently, in random order;
//! - **racing workers**: a rebalance hands a partition to another worker while the old one
//!   finishes its batch as a zombie (both commit to the same instances → conflicts → reruns);
//! - **crashes**: a worker loses everything in flight at any phase — between commit and emit,
//!   between emit and offset store, inside a local round — and restarts from the committed
//!   offsets.
//!
//! Local rounds are modelled as the runtime runs them: after a batch's commit and emit, the
//! activity invocations it scheduled run in the worker, and their replies are stepped into their
//! callers and committed (only if the step emits nothing but activity invocations and state,
//! fenced with the epoch the worker took when it started on the partition), up to
//! [`Config::local_rounds`] rounds; the rest goes through the log.
//!
//! At quiescence, invariants are checked; the same seed always gives the same trace hash.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use durable_processor::context::ActivityRequest;
use durable_processor::engine::{DropReason, StepOutput};
use durable_processor::examples::{self, Account, ApprovalInput, Counter, TransferInput, TransferOutcome};
use durable_processor::history::{Body, InstanceRecord, OrchestrationStatus};
use durable_processor::id::{InstanceId, Kind};
use durable_processor::store::{CommitOutcome, MemoryStore, Store, TimerEntry, Write};
use durable_processor::{Delivery, Effect, Engine, Registry, StepInput};
use durable_schemas::{Envelope, Event, Origin, Payload};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How much of each workload one seed runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// `HelloSequence` instances (5 activities in order each).
    pub hello: usize,
    /// `FanOut` instances.
    pub fanout: usize,
    /// Activities per `FanOut`.
    pub fanout_width: u64,
    /// `Counter` entities.
    pub counters: usize,
    /// Signals (`add 1`) per counter.
    pub signals: usize,
    /// `Approval` instances (retries, timers, external events, entity calls, a sub-orchestration).
    pub approvals: usize,
    /// `Ticker` instances (continue-as-new with buffered events).
    pub tickers: usize,
    /// `Account` entities of the bank workload.
    pub accounts: usize,
    /// `Transfer` orchestrations between random pairs of accounts (about one in four is also
    /// terminated at a random moment).
    pub transfers: usize,
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            hello: 3,
            fanout: 1,
            fanout_width: 100,
            counters: 3,
            signals: 10,
            approvals: 2,
            tickers: 1,
            accounts: 4,
            transfers: 10,
        }
    }
}

/// Which faults the scheduler injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Producer and client duplicates.
    pub duplicates: bool,
    /// Worker crashes at any phase.
    pub crashes: bool,
    /// Rebalances, with zombies racing the new owner.
    pub rebalances: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self { duplicates: true, crashes: true, rebalances: true }
    }
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed: everything random comes from it.
    pub seed: u64,
    /// Partitions of the events topic.
    pub partitions: u32,
    /// Workers in the consumer group.
    pub workers: usize,
    /// Workload sizes.
    pub scale: Scale,
    /// Faults.
    pub faults: Faults,
    /// Record a human-readable trace.
    pub trace: bool,
    /// Give up (a violation) after this many scheduler actions.
    pub max_actions: usize,
    /// Local rounds per batch (0: every activity invocation and reply goes through the log, as
    /// with `--spread-activities`). Small, so that both paths run.
    pub local_rounds: usize,
    /// Fence local rounds' commits with the worker's epoch, as the runtime does. Off only to
    /// show what the fence prevents (a zombie's local commit replacing an outbox behind the
    /// next owner's back: a hung orchestration).
    pub fence_local_commits: bool,
}

impl Config {
    /// The default configuration for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            partitions: 4,
            workers: 3,
            scale: Scale::default(),
            faults: Faults::default(),
            trace: false,
            max_actions: 200_000,
            local_rounds: 2,
            fence_local_commits: true,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Hash of every scheduler decision and every produced record.
    pub trace_hash: u64,
    /// Scheduler actions taken.
    pub actions: usize,
    /// Invariant violations (empty: the run passed).
    pub violations: Vec<String>,
    /// The trace, if requested.
    pub trace: Vec<String>,
    /// Engine steps that had to be re-run after a commit conflict.
    pub conflicts: usize,
    /// Worker crashes injected.
    pub crashes: usize,
}

/// The registry the simulator runs: the bundled examples.
pub fn registry() -> Registry {
    examples::register(Registry::new())
}

fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("simulated I/O must complete immediately"),
    }
}

/// One record of a batch after decoding.
#[derive(Debug, Clone)]
struct Fetched {
    offset: i64,
    envelope: Envelope,
}

/// An instance's part of a batch.
#[derive(Debug, Clone)]
struct Group {
    id: InstanceId,
    deliveries: Vec<Fetched>,
    loaded: Option<(InstanceRecord, u64)>,
    output: Option<StepOutput>,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Records read; next: load.
    Fetched,
    /// Records loaded; next: compute.
    Loaded,
    /// Steps computed; next: commit.
    Computed,
    /// Committed; next: emit (what to produce, by input position).
    Committed(Vec<(i64, Vec<Envelope>)>),
    /// Emitted everything but these activity invocations; next: run them and commit their
    /// replies into their callers (a local round).
    Local(Vec<Envelope>),
    /// Produced; next: store the offset.
    Emitted,
}

#[derive(Debug, Clone)]
struct Task {
    partition: u32,
    end: usize,
    groups: Vec<Group>,
    /// Activity invocations in the batch: (offset, request).
    activities: Vec<(i64, Envelope)>,
    phase: Phase,
    /// Lost the partition in a rebalance: finishes its batch, cannot store offsets.
    zombie: bool,
    /// Local rounds run so far.
    rounds: usize,
    /// The partition's epoch this worker took (its local commits are fenced with it).
    epoch: u64,
}

#[derive(Debug, Default)]
struct Worker {
    /// Next offset to fetch, per owned partition.
    positions: BTreeMap<u32, usize>,
    /// In-flight batches (one per partition; zombies included).
    tasks: Vec<Task>,
    /// Per partition, the epoch this worker took at its first fetch since it was assigned the
    /// partition or restarted (the runtime fences when a partition's worker starts).
    epochs: BTreeMap<u32, u64>,
}

struct World {
    config: Config,
    rng: ChaCha8Rng,
    now: i64,
    engine: Engine,
    store: MemoryStore,
    logs: Vec<Vec<Vec<u8>>>,
    committed: Vec<usize>,
    owner: Vec<usize>,
    workers: Vec<Worker>,
    clients: VecDeque<Envelope>,
    hash: u64,
    trace: Vec<String>,
    /// Times each orchestration was observed to go from running to finished at a commit.
    finishes: BTreeMap<String, u32>,
    dead_letters: Vec<String>,
    conflicts: usize,
    crashes: usize,
    /// Encodings of every event in a committed outbox: nothing else may leave a step.
    committed_emits: BTreeSet<Vec<u8>>,
    /// The bank workload: opening deposits and transfers (and which were terminated).
    bank: Bank,
}

/// What the bank workload sent, to check the books at the end.
#[derive(Debug, Default)]
struct Bank {
    deposits: BTreeMap<String, i64>,
    transfers: Vec<(String, TransferInput, bool)>,
}

const T0: i64 = 1_700_000_000_000;

impl World {
    fn new(config: Config) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let partitions = config.partitions as usize;
        let workers = (0..config.workers).map(|_| Worker::default()).collect();
        let mut world = Self {
            rng,
            now: T0,
            engine: Engine::new(registry()),
            store: MemoryStore::new(),
            logs: vec![Vec::new(); partitions],
            committed: vec![0; partitions],
            owner: vec![0; partitions],
            workers,
            clients: VecDeque::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            trace: Vec::new(),
            finishes: BTreeMap::new(),
            dead_letters: Vec::new(),
            conflicts: 0,
            crashes: 0,
            committed_emits: BTreeSet::new(),
            bank: Bank::default(),
            config,
        };
        for p in 0..world.config.partitions {
            let w = p as usize % world.config.workers;
            world.assign(p, w);
        }
        world.clients = world.workload();
        world
    }

    fn mix(&mut self, data: &[u8]) {
        for &b in data {
            self.hash ^= b as u64;
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.config.trace {
            let line = line();
            self.trace.push(format!("t+{} {line}", self.now - T0));
        }
    }

    fn client_event(&self, n: usize, target: String, body: Event) -> Envelope {
        let mut e = Envelope::new(format!("client-{}-{n}", self.config.seed), target, self.now, body);
        e.source = Some("client:sim".into());
        e
    }

    /// Client events, per instance in order, instances interleaved at random.
    fn workload(&mut self) -> VecDeque<Envelope> {
        let s = self.config.scale;
        let mut per_instance: Vec<VecDeque<Envelope>> = Vec::new();
        let mut n = 0;
        let mut next = |world: &World, target: String, body: Event| {
            n += 1;
            world.client_event(n, target, body)
        };
        let json = |v: &dyn erased::Json| v.payload();
        for i in 0..s.hello {
            let id = InstanceId::orchestration("HelloSequence", format!("h{i}")).canonical();
            per_instance
                .push([next(self, id, Event::StartOrchestration { input: json(&Vec::<String>::new()) })].into());
        }
        for i in 0..s.fanout {
            let id = InstanceId::orchestration("FanOut", format!("f{i}")).canonical();
            per_instance.push([next(self, id, Event::StartOrchestration { input: json(&s.fanout_width) })].into());
        }
        for i in 0..s.counters {
            let id = InstanceId::entity("Counter", format!("c{i}")).canonical();
            let signals = (0..s.signals)
                .map(|_| next(self, id.clone(), Event::EntityOperation { operation: "add".into(), input: json(&1i64) }))
                .collect();
            per_instance.push(signals);
        }
        for i in 0..s.approvals {
            let id = InstanceId::orchestration("Approval", format!("a{i}")).canonical();
            let input = ApprovalInput { counter: format!("ac{i}"), amount: i as i64 + 1 };
            let start = next(self, id.clone(), Event::StartOrchestration { input: json(&input) });
            let raise = next(self, id, Event::RaiseEvent { name: "approve".into(), payload: json(&true) });
            per_instance.push([start, raise].into());
        }
        for i in 0..s.tickers {
            let id = InstanceId::orchestration("Ticker", format!("t{i}")).canonical();
            let mut events: VecDeque<Envelope> =
                [next(self, id.clone(), Event::StartOrchestration { input: json(&(0u32, 3u32)) })].into();
            for tick in 0..3u32 {
                events.push_back(next(
                    self,
                    id.clone(),
                    Event::RaiseEvent { name: "tick".into(), payload: json(&tick) },
                ));
            }
            per_instance.push(events);
        }
        // The bank: opening deposits go first, transfers are interleaved with everything else.
        let mut out = VecDeque::new();
        for i in 0..s.accounts {
            let key = format!("acct{i}");
            let amount = self.rng.gen_range(50..=100i64);
            self.bank.deposits.insert(key.clone(), amount);
            let id = InstanceId::entity("Account", key).canonical();
            out.push_back(next(self, id, Event::EntityOperation { operation: "deposit".into(), input: json(&amount) }));
        }
        for i in 0..if s.accounts >= 2 { s.transfers } else { 0 } {
            let from = self.rng.gen_range(0..s.accounts);
            let to = (from + self.rng.gen_range(1..s.accounts)) % s.accounts;
            let amount = self.rng.gen_range(1..=60);
            let input = TransferInput { from: format!("acct{from}"), to: format!("acct{to}"), amount };
            let id = InstanceId::orchestration("Transfer", format!("x{i}")).canonical();
            let start = next(self, id.clone(), Event::StartOrchestration { input: json(&input) });
            let mut events: VecDeque<Envelope> = [start].into();
            let terminated = self.rng.gen_ratio(1, 4);
            if terminated {
                events.push_back(next(self, id.clone(), Event::Terminate { reason: "simulated operator".into() }));
            }
            self.bank.transfers.push((id, input, terminated));
            per_instance.push(events);
        }
        while per_instance.iter().any(|q| !q.is_empty()) {
            let live: Vec<usize> = (0..per_instance.len()).filter(|&i| !per_instance[i].is_empty()).collect();
            let pick = live[self.rng.gen_range(0..live.len())];
            out.push_back(per_instance[pick].pop_front().expect("non-empty"));
        }
        out
    }

    fn partition_of(&self, target: &str) -> u32 {
        durable_processor::id::partition_for_key(target.as_bytes(), self.config.partitions)
    }

    fn produce(&mut self, envelope: &Envelope) {
        let p = self.partition_of(&envelope.target) as usize;
        self.produce_to(p, envelope);
    }

    fn produce_to(&mut self, p: usize, envelope: &Envelope) {
        let bytes = envelope.encode();
        self.mix(&bytes);
        self.logs[p].push(bytes.clone());
        if self.config.faults.duplicates && self.rng.gen_ratio(1, 20) {
            self.logs[p].push(bytes);
            self.note(|| format!("duplicate of {} in p{p}", envelope.id));
        }
    }

    fn assign(&mut self, partition: u32, worker: usize) {
        self.owner[partition as usize] = worker;
        self.workers[worker].epochs.remove(&partition);
        let committed = self.committed[partition as usize];
        self.workers[worker].positions.insert(partition, committed);
    }

    /// Every action that can be taken now: (worker, task index or partition to start).
    fn work(&self) -> Vec<(usize, Result<usize, u32>)> {
        let mut work = Vec::new();
        for (w, worker) in self.workers.iter().enumerate() {
            for t in 0..worker.tasks.len() {
                work.push((w, Ok(t)));
            }
            for (&p, &pos) in &worker.positions {
                let busy = worker.tasks.iter().any(|t| t.partition == p && !t.zombie);
                if !busy && pos < self.logs[p as usize].len() {
                    work.push((w, Err(p)));
                }
            }
        }
        work
    }

    fn run(mut self) -> Outcome {
        let mut actions = 0;
        let mut violations = Vec::new();
        loop {
            actions += 1;
            if actions > self.config.max_actions {
                violations.push(format!("did not quiesce within {} actions", self.config.max_actions));
                break;
            }
            let work = self.work();
            let due_timers =
                self.store.next_due().is_some_and(|t| t <= self.now) || !self.store.unacknowledged().is_empty();
            let can_send = !self.clients.is_empty();
            if work.is_empty() && !due_timers && !can_send {
                match self.store.next_due() {
                    Some(t) => {
                        let jump = t - self.now;
                        self.note(|| format!("clock jumps {jump} ms"));
                        self.now = t;
                        self.mix(&t.to_le_bytes());
                        continue;
                    }
                    None => break, // quiescent
                }
            }
            self.now += self.rng.gen_range(0..3);
            let roll = self.rng.gen_range(0..1000);
            if self.config.faults.crashes && roll < 4 {
                self.crash();
            } else if self.config.faults.rebalances && roll < 20 {
                self.rebalance();
            } else if can_send && (roll < 150 || work.is_empty() && !due_timers) {
                self.send_client();
            } else if due_timers && (roll < 250 || work.is_empty()) {
                self.release_timers();
            } else if !work.is_empty() {
                let (w, what) = work[self.rng.gen_range(0..work.len())];
                self.mix(&[w as u8, 0xA0]);
                match what {
                    Ok(t) => self.advance(w, t),
                    Err(p) => self.fetch(w, p),
                }
            }
        }
        if violations.is_empty() {
            violations = self.check();
        }
        Outcome {
            trace_hash: self.hash,
            actions,
            violations,
            trace: std::mem::take(&mut self.trace),
            conflicts: self.conflicts,
            crashes: self.crashes,
        }
    }

    fn send_client(&mut self) {
        let e = self.clients.pop_front().expect("checked");
        self.note(|| format!("client sends {} {} to {}", e.id, e.body.core().name(), e.target));
        self.produce(&e);
        if self.config.faults.duplicates && self.rng.gen_ratio(1, 10) {
            self.note(|| format!("client retries {}", e.id));
            self.produce(&e);
        }
    }

    fn crash(&mut self) {
        let w = self.rng.gen_range(0..self.workers.len());
        self.crashes += 1;
        self.mix(&[w as u8, 0xC0]);
        let phases: Vec<String> =
            self.workers[w].tasks.iter().map(|t| format!("p{}:{:?}", t.partition, phase_name(&t.phase))).collect();
        self.note(|| format!("worker {w} crashes (in flight: {})", phases.join(", ")));
        self.workers[w].tasks.clear();
        self.workers[w].epochs.clear();
        let owned: Vec<u32> = self.workers[w].positions.keys().copied().collect();
        for p in owned {
            self.workers[w].positions.insert(p, self.committed[p as usize]);
        }
    }

    fn rebalance(&mut self) {
        let p = self.rng.gen_range(0..self.config.partitions);
        let from = self.owner[p as usize];
        let to = self.rng.gen_range(0..self.workers.len());
        if from == to {
            return;
        }
        self.mix(&[p as u8, from as u8, to as u8, 0xB0]);
        let zombie = self.rng.gen_bool(0.8);
        let old = &mut self.workers[from];
        old.positions.remove(&p);
        if zombie {
            for t in old.tasks.iter_mut().filter(|t| t.partition == p) {
                t.zombie = true;
            }
        } else {
            old.tasks.retain(|t| t.partition != p);
        }
        self.note(|| {
            format!(
                "p{p} moves from worker {from} to {to}{}",
                if zombie { " (old owner goes on as a zombie)" } else { "" }
            )
        });
        self.assign(p, to);
    }

    fn release_timers(&mut self) {
        let due: Vec<u32> = (0..self.config.partitions).collect();
        for p in due {
            let released = now_or_never(self.store.claim_due_timers(p, self.now, 64)).expect("memory store");
            if released.is_empty() {
                continue;
            }
            let up_to = released.last().map(|t| t.seq).expect("non-empty");
            for timer in &released {
                let mut e = Envelope::decode(&timer.envelope).expect("we encoded it");
                e.origin = Some(Origin { stream: format!("t{p}"), seq: timer.seq });
                self.note(|| format!("timer t{p}#{} releases {} for {}", timer.seq, e.body.core().name(), e.target));
                self.produce(&e);
            }
            // A crash between the produce and the ack re-releases the same timers later.
            if self.config.faults.crashes && self.rng.gen_ratio(1, 10) {
                self.note(|| format!("timer owner of p{p} crashes before ack"));
                continue;
            }
            now_or_never(self.store.ack_timers(p, up_to)).expect("memory store");
        }
    }

    fn fetch(&mut self, w: usize, p: u32) {
        let start = self.workers[w].positions[&p];
        let len = self.logs[p as usize].len();
        let end = (start + self.rng.gen_range(1..=8)).min(len);
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut activities = Vec::new();
        for offset in start..end {
            let bytes = &self.logs[p as usize][offset];
            let envelope = match Envelope::decode(bytes) {
                Ok(e) => e,
                Err(e) => {
                    self.dead_letters.push(format!("p{p}@{offset}: {e}"));
                    continue;
                }
            };
            let id = match InstanceId::parse(&envelope.target) {
                Ok(id) => id,
                Err(e) => {
                    self.dead_letters.push(format!("p{p}@{offset}: {e}"));
                    continue;
                }
            };
            if id.kind() == Kind::Activity {
                activities.push((offset as i64, envelope));
                continue;
            }
            groups
                .entry(envelope.target.clone())
                .or_insert_with(|| Group { id, deliveries: Vec::new(), loaded: None, output: None })
                .deliveries
                .push(Fetched { offset: offset as i64, envelope });
        }
        let epoch = match self.workers[w].epochs.get(&p) {
            Some(epoch) => *epoch,
            None => {
                let epoch = now_or_never(self.store.fence(p)).expect("memory store");
                self.note(|| format!("worker {w} fences p{p}: epoch {epoch}"));
                self.workers[w].epochs.insert(p, epoch);
                epoch
            }
        };
        self.note(|| format!("worker {w} fetches p{p}@{start}..{end}"));
        self.workers[w].positions.insert(p, end);
        let task = Task {
            partition: p,
            end,
            groups: groups.into_values().collect(),
            activities,
            phase: Phase::Fetched,
            zombie: false,
            rounds: 0,
            epoch,
        };
        self.workers[w].tasks.push(task);
    }

    fn advance(&mut self, w: usize, t: usize) {
        let mut task = self.workers[w].tasks.remove(t);
        let p = task.partition;
        let done = match task.phase.clone() {
            Phase::Fetched => {
                let ids: Vec<String> = task.groups.iter().map(|g| g.id.canonical()).collect();
                let loaded = now_or_never(self.store.load(p, &ids)).expect("memory store");
                for (g, stored) in task.groups.iter_mut().zip(loaded) {
                    g.loaded = stored.map(|s| (InstanceRecord::from_blob(&s.blob).expect("we wrote it"), s.etag));
                }
                self.note(|| format!("worker {w} loads {} instances of p{p}", ids.len()));
                task.phase = Phase::Loaded;
                false
            }
            Phase::Loaded => {
                for g in &mut task.groups {
                    let deliveries = g
                        .deliveries
                        .iter()
                        .map(|f| Delivery { envelope: f.envelope.clone(), offset: Some(f.offset) })
                        .collect();
                    let record = g.loaded.as_ref().map(|(r, _)| r.clone());
                    let input = StepInput { deliveries, now: self.now, partition: Some(p), trigger: None };
                    g.output = Some(self.engine.step(&g.id, record, input));
                }
                if let Some(cut) = split_at(&task.groups) {
                    // As the runtime does: the batch ends before the first new record of an
                    // instance that also resends, so that the resent outbox leaves before the
                    // instance's next commit replaces it; the rest is fetched again.
                    self.note(|| format!("worker {w} cuts its batch of p{p} at {cut} (a resend comes first)"));
                    task.end = cut as usize;
                    for g in &mut task.groups {
                        g.deliveries.retain(|f| f.offset < cut);
                    }
                    task.groups.retain(|g| !g.deliveries.is_empty());
                    task.activities.retain(|(offset, _)| *offset < cut);
                    if !task.zombie {
                        self.workers[w].positions.insert(p, cut as usize);
                    }
                    task.phase = Phase::Loaded;
                    self.workers[w].tasks.insert(t, task);
                    return;
                }
                self.note(|| format!("worker {w} computes {} steps of p{p}", task.groups.len()));
                task.phase = Phase::Computed;
                false
            }
            Phase::Computed => {
                let mut writes = Vec::new();
                for g in &task.groups {
                    let out = g.output.as_ref().expect("computed");
                    if out.changed {
                        let timers =
                            out.delayed().map(|(fire_at, e)| TimerEntry { fire_at, envelope: e.encode() }).collect();
                        writes.push(Write {
                            id: g.id.canonical(),
                            expected: g.loaded.as_ref().map(|(_, etag)| *etag),
                            blob: out.record.to_blob(),
                            timers,
                        });
                    }
                }
                let outcomes = now_or_never(self.store.commit(p, writes)).expect("memory store");
                let conflicts = outcomes.iter().filter(|o| **o == CommitOutcome::Conflict).count();
                self.observe_commits(&task, &outcomes);
                if conflicts > 0 {
                    // Throw the results away (nothing left the process), reload, rerun.
                    self.conflicts += conflicts;
                    self.mix(&[0xCF, conflicts as u8]);
                    self.note(|| format!("worker {w} commit on p{p}: {conflicts} conflicts, rerun"));
                    task.phase = Phase::Fetched;
                } else {
                    let emits = self.outbound(&task);
                    self.note(|| format!("worker {w} commits p{p}..{}", task.end));
                    task.phase = Phase::Committed(emits);
                }
                false
            }
            Phase::Committed(emits) => {
                let local = self.config.local_rounds > 0;
                let run_here = local && task.rounds < self.config.local_rounds;
                let mut requests = Vec::new();
                for (_, envelopes) in &emits {
                    for e in envelopes {
                        match (local, Kind::Activity.owns(&e.target)) {
                            (true, true) if run_here => requests.push(e.clone()),
                            (true, true) => self.produce_to(p as usize, e),
                            _ => self.produce(e),
                        }
                    }
                }
                self.note(|| {
                    let n = emits.iter().map(|(_, e)| e.len()).sum::<usize>() - requests.len();
                    format!("worker {w} emits {n} events for p{p}, runs {} activities here", requests.len())
                });
                task.phase = if requests.is_empty() { Phase::Emitted } else { Phase::Local(requests) };
                false
            }
            Phase::Local(requests) => {
                task.rounds += 1;
                let emits = self.local_round(w, &task, requests);
                task.phase = Phase::Committed(emits);
                false
            }
            Phase::Emitted => {
                if !task.zombie && self.owner[p as usize] == w {
                    let c = &mut self.committed[p as usize];
                    *c = (*c).max(task.end);
                    self.note(|| format!("worker {w} stores offset p{p}={}", task.end));
                } else {
                    self.note(|| format!("zombie worker {w} cannot store offset p{p}={}", task.end));
                }
                true
            }
        };
        if !done {
            self.workers[w].tasks.insert(t, task);
        }
    }

    /// One local round, as the runtime runs it: run `requests`, step their replies into their
    /// callers among the batch's instances (loaded from the store: the simulator keeps no
    /// cache), each new outbox answering to the record its stored outbox answers to, and commit
    /// the steps whose outbox holds only activity invocations and state, fenced with the task's
    /// epoch. Replies not applied go out through the log with the round's outboxes.
    fn local_round(&mut self, w: usize, task: &Task, requests: Vec<Envelope>) -> Vec<(i64, Vec<Envelope>)> {
        let p = task.partition;
        let callers: BTreeSet<String> = task.groups.iter().map(|g| g.id.canonical()).collect();
        let mut replies: BTreeMap<String, Vec<Envelope>> = BTreeMap::new();
        let mut emits: Vec<(i64, Vec<Envelope>)> = Vec::new();
        for request in &requests {
            let Ok(req) = ActivityRequest::parse(request) else { continue };
            let Some(future) = self.engine.registry().run_activity(req.id.name(), req.context(), req.input.clone())
            else {
                self.dead_letters.push(format!("{}: no activity {}", request.id, req.id.name()));
                continue;
            };
            let reply = req.reply(now_or_never(future), self.now);
            if callers.contains(&reply.target) {
                replies.entry(reply.target.clone()).or_default().push(reply);
            } else {
                emits.push((0, vec![reply]));
            }
        }
        let ids: Vec<String> = replies.keys().cloned().collect();
        let loaded = now_or_never(self.store.load(p, &ids)).expect("memory store");
        let mut writes = Vec::new();
        let mut stepped = Vec::new();
        for (id, stored) in ids.into_iter().zip(loaded) {
            let replies = replies.remove(&id).unwrap_or_default();
            let Some(stored) = stored else {
                emits.push((0, replies));
                continue;
            };
            let record = InstanceRecord::from_blob(&stored.blob).expect("we wrote it");
            let input = StepInput {
                deliveries: replies.iter().map(|e| Delivery { envelope: e.clone(), offset: None }).collect(),
                now: self.now,
                partition: Some(p),
                trigger: record.outbox.offset,
            };
            let target = InstanceId::parse(&id).expect("valid id");
            let out = self.engine.step(&target, Some(record.clone()), input);
            if !out.stays_local() {
                emits.push((record.outbox.offset.unwrap_or(0), replies));
                continue;
            }
            let timers = out.delayed().map(|(fire_at, e)| TimerEntry { fire_at, envelope: e.encode() }).collect();
            writes.push(Write { id: id.clone(), expected: Some(stored.etag), blob: out.record.to_blob(), timers });
            stepped.push((id, record, out, replies));
        }
        let outcomes = if self.config.fence_local_commits {
            now_or_never(self.store.commit_fenced(p, task.epoch, writes))
        } else {
            now_or_never(self.store.commit(p, writes))
        }
        .expect("memory store");
        let mut committed = 0;
        for ((id, before, out, replies), outcome) in stepped.into_iter().zip(outcomes) {
            let trigger = out.record.outbox.offset.unwrap_or(0);
            self.note(|| format!("  local step of {id} (trigger {trigger}, epoch {}): {outcome:?}", task.epoch));
            if outcome == CommitOutcome::Conflict {
                self.conflicts += 1;
                emits.push((trigger, replies));
                continue;
            }
            committed += 1;
            self.observe_commit(id, Some(&before), &out.record);
            emits.push((trigger, emitted(&out.record.outbox.effects)));
        }
        self.mix(&[0x10, requests.len() as u8, committed as u8]);
        self.note(|| format!("worker {w} local round on p{p}: {} activities, {committed} commits", requests.len()));
        emits.sort_by_key(|(offset, _)| *offset);
        emits
    }

    /// What the batch sends after its commit, ordered by input position: each committed step's
    /// outbox, the outbox of a step committed earlier that this batch re-delivers, activity
    /// replies, and dead letters.
    fn outbound(&mut self, task: &Task) -> Vec<(i64, Vec<Envelope>)> {
        let mut emits = Vec::new();
        for g in &task.groups {
            let out = g.output.as_ref().expect("computed");
            let last = g.deliveries.last().map(|f| f.offset).unwrap_or(0);
            if let Some(resend) = &out.resend {
                let what: Vec<String> = emitted(&resend.effects).iter().map(|e| e.target.clone()).collect();
                self.note(|| format!("  {} resends its outbox of {:?}: {what:?}", g.id, resend.offset));
                emits.push((resend.offset.unwrap_or(last), emitted(&resend.effects)));
            }
            if out.changed {
                emits.push((last, emitted(&out.record.outbox.effects)));
                for d in &out.dead_letters {
                    self.dead_letters.push(format!("{}: {}", d.envelope.id, d.reason));
                }
            }
            debug_assert!(out.dropped.iter().all(|d| d.reason != DropReason::AlreadyRunning));
        }
        for (offset, request) in &task.activities {
            match ActivityRequest::parse(request) {
                Ok(req) => {
                    let run = self.engine.registry().run_activity(req.id.name(), req.context(), req.input.clone());
                    match run {
                        Some(future) => {
                            let result = now_or_never(future);
                            emits.push((*offset, vec![req.reply(result, self.now)]));
                        }
                        None => self.dead_letters.push(format!("{}: no activity {}", request.id, req.id.name())),
                    }
                }
                Err(reason) => self.dead_letters.push(format!("{}: {reason}", request.id)),
            }
        }
        emits.sort_by_key(|(offset, _)| *offset);
        emits
    }

    /// Record what each successful write commits: its outbox (the only events that may leave),
    /// and, per orchestration, commits that took it from running (or nothing) to finished.
    fn observe_commits(&mut self, task: &Task, outcomes: &[CommitOutcome]) {
        let mut outcomes = outcomes.iter();
        for g in &task.groups {
            let out = g.output.as_ref().expect("computed");
            if !out.changed || !matches!(outcomes.next(), Some(CommitOutcome::Committed { .. })) {
                continue;
            }
            self.observe_commit(g.id.canonical(), g.loaded.as_ref().map(|(r, _)| r), &out.record);
        }
    }

    /// One committed write of `id`, from `before` to `after`: its outbox may leave, and an
    /// orchestration that went from running (or nothing) to finished counts a finish.
    fn observe_commit(&mut self, id: String, before: Option<&InstanceRecord>, after: &InstanceRecord) {
        for e in emitted(&after.outbox.effects) {
            self.committed_emits.insert(e.encode());
        }
        let finished = |r: &InstanceRecord| r.orchestration().is_some_and(|h| h.status.is_finished());
        if finished(after) && !before.is_some_and(finished) {
            *self.finishes.entry(id).or_default() += 1;
        }
    }

    fn check(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (p, log) in self.logs.iter().enumerate() {
            if self.committed[p] != log.len() {
                v.push(format!("p{p}: committed offset {} but {} records", self.committed[p], log.len()));
            }
        }
        for (p, log) in self.logs.iter().enumerate() {
            for (offset, bytes) in log.iter().enumerate() {
                let Ok(e) = Envelope::decode(bytes) else {
                    continue;
                };
                let from_step = e.origin.as_ref().is_some_and(|o| o.stream.starts_with('p'));
                if from_step && !self.committed_emits.contains(bytes) {
                    v.push(format!("p{p}@{offset}: {} left a step that never committed", e.id));
                }
            }
        }
        if self.store.pending_timers() != 0 {
            v.push(format!("{} timers still pending", self.store.pending_timers()));
        }
        for d in &self.dead_letters {
            v.push(format!("unexpected dead letter {d}"));
        }
        let s = self.config.scale;
        let record = |id: &str| self.store.get(id).map(|s| InstanceRecord::from_blob(&s.blob).expect("valid blob"));
        let output = |id: &str| -> Result<Payload, String> {
            match record(id).as_ref().and_then(|r| r.orchestration()).map(|h| h.status.clone()) {
                Some(OrchestrationStatus::Completed { output }) => Ok(output),
                other => Err(format!("{id}: expected completed, found {other:?}")),
            }
        };
        let mut expect = |id: String, want: serde_json::Value| match output(&id) {
            Ok(p) => {
                let got: serde_json::Value = p.decode().unwrap_or(serde_json::Value::Null);
                if got != want {
                    v.push(format!("{id}: output {got} != expected {want}"));
                }
            }
            Err(e) => v.push(e),
        };
        let hello: Vec<String> = examples::CITIES.iter().map(|c| format!("Hello {c}!")).collect();
        for i in 0..s.hello {
            expect(InstanceId::orchestration("HelloSequence", format!("h{i}")).canonical(), serde_json::json!(hello));
        }
        for i in 0..s.fanout {
            let want = examples::fan_out_expected(s.fanout_width);
            expect(InstanceId::orchestration("FanOut", format!("f{i}")).canonical(), serde_json::json!(want));
        }
        for i in 0..s.approvals {
            let input = ApprovalInput { counter: format!("ac{i}"), amount: i as i64 + 1 };
            let want = examples::approval_expected(&input);
            expect(InstanceId::orchestration("Approval", format!("a{i}")).canonical(), serde_json::json!(want));
        }
        for i in 0..s.tickers {
            expect(InstanceId::orchestration("Ticker", format!("t{i}")).canonical(), serde_json::json!(3));
        }
        for i in 0..s.counters {
            let id = InstanceId::entity("Counter", format!("c{i}")).canonical();
            let value = record(&id)
                .and_then(|r| r.entity().and_then(|e| e.state.clone()))
                .and_then(|p| p.decode::<Counter>().ok())
                .map(|c| c.value);
            if value.unwrap_or(0) != s.signals as i64 {
                v.push(format!("{id}: value {value:?} != {} distinct signals", s.signals));
            }
        }
        self.check_bank(&mut v);
        for id in self.store.ids() {
            let r = record(&id).expect("listed");
            if let Body::Orchestration(h) = &r.body {
                if !h.status.is_finished() {
                    v.push(format!("{id}: stuck in {:?} (waiting on {} commands)", h.status, h.commands.len()));
                }
                let mut slots = BTreeSet::new();
                for entry in &h.log {
                    if !slots.insert(entry.slot) {
                        v.push(format!("{id}: slot {} completed twice", entry.slot));
                    }
                }
                match self.finishes.get(&id) {
                    Some(1) => {}
                    n => v.push(format!("{id}: finished {} times", n.copied().unwrap_or(0))),
                }
            }
        }
        v
    }
}

impl World {
    /// Money is conserved, no balance is negative, no lock or queued work is left, and the
    /// balances are explained exactly by the transfers that reported `Transferred` plus some
    /// subset of the terminated ones (each applied exactly once, or not at all).
    fn check_bank(&self, v: &mut Vec<String>) {
        if self.bank.deposits.is_empty() {
            return;
        }
        let load = |id: &str| self.store.get(id).map(|s| InstanceRecord::from_blob(&s.blob).expect("valid blob"));
        let mut balances = BTreeMap::new();
        for key in self.bank.deposits.keys() {
            let id = InstanceId::entity("Account", key.clone()).canonical();
            let Some(record) = load(&id) else {
                v.push(format!("{id}: missing"));
                continue;
            };
            let entity = record.entity().expect("an entity");
            if let Some(lock) = &entity.lock {
                v.push(format!("{id}: still locked by {} at quiescence", lock.owner));
            }
            if !entity.queue.is_empty() {
                v.push(format!("{id}: {} operations still queued at quiescence", entity.queue.len()));
            }
            let balance = entity.state.as_ref().and_then(|p| p.decode::<Account>().ok()).map_or(0, |a| a.balance);
            if balance < 0 {
                v.push(format!("{id}: negative balance {balance}"));
            }
            balances.insert(key.clone(), balance);
        }
        let total: i64 = self.bank.deposits.values().sum();
        let held: i64 = balances.values().sum();
        if total != held {
            v.push(format!("bank: {held} in the accounts but {total} deposited"));
        }
        let mut expected = self.bank.deposits.clone();
        let mut unknown = Vec::new();
        for (id, input, terminated) in &self.bank.transfers {
            let record = load(id);
            match record.as_ref().and_then(|r| r.orchestration()).map(|h| &h.status) {
                Some(OrchestrationStatus::Completed { output }) => match output.decode::<TransferOutcome>() {
                    Ok(TransferOutcome::Transferred) => {
                        *expected.get_mut(&input.from).expect("account") -= input.amount;
                        *expected.get_mut(&input.to).expect("account") += input.amount;
                    }
                    Ok(TransferOutcome::Refused { .. }) => {}
                    Err(e) => v.push(format!("{id}: output does not decode: {e}")),
                },
                Some(OrchestrationStatus::Terminated { .. }) if *terminated => unknown.push(input),
                other => v.push(format!("{id}: expected completed (or terminated if asked), found {other:?}")),
            }
        }
        let explained = (0u32..1 << unknown.len().min(16)).any(|subset| {
            let mut books = expected.clone();
            for (i, t) in unknown.iter().enumerate() {
                if subset & (1 << i) != 0 {
                    *books.get_mut(&t.from).expect("account") -= t.amount;
                    *books.get_mut(&t.to).expect("account") += t.amount;
                }
            }
            books == balances
        });
        if !explained {
            v.push(format!(
                "bank: balances {balances:?} are not explained by the transfers (expected {expected:?}, {} terminated)",
                unknown.len()
            ));
        }
    }
}

fn emitted(effects: &[Effect]) -> Vec<Envelope> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// Where a batch must end: before the first new record of an instance whose step both resends
/// an earlier outbox and commits a new one (the commit would replace an outbox that may not have
/// left yet). `None`: no such instance.
fn split_at(groups: &[Group]) -> Option<i64> {
    groups.iter().filter_map(|g| g.output.as_ref()?.end_before).min()
}

fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Fetched => "fetched",
        Phase::Loaded => "loaded",
        Phase::Computed => "computed",
        Phase::Committed(_) => "committed",
        Phase::Local(_) => "local round",
        Phase::Emitted => "emitted",
    }
}

/// Run one simulation.
pub fn run(config: Config) -> Outcome {
    World::new(config).run()
}

/// Write a short report of an outcome.
pub fn describe(config: &Config, outcome: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed={} partitions={} workers={} scale={:?} faults={:?} actions={} trace={:016x}",
        config.seed,
        config.partitions,
        config.workers,
        config.scale,
        config.faults,
        outcome.actions,
        outcome.trace_hash
    );
    for v in &outcome.violations {
        let _ = writeln!(s, "  violation: {v}");
    }
    s
}

mod erased {
    use durable_schemas::Payload;
    use serde::Serialize;

    /// Serialize anything to a JSON payload (object-safe helper for the workload builder).
    pub trait Json {
        fn payload(&self) -> Payload;
    }

    impl<T: Serialize> Json for T {
        fn payload(&self) -> Payload {
            Payload::json(self).expect("workload values serialize")
        }
    }
}
