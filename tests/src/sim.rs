//! A deterministic simulator of the whole commit protocol, with faults — driving the same
//! partition core ([`durable_processor::partition`]) the runtime drives.
//!
//! The world: a partitioned log of encoded envelopes (Kafka), a [`MemoryStore`] (Redis, through
//! the same [`Store`] trait), a consumer group of workers, each with one [`Partition`] core per
//! owned partition (its record cache, its epoch), producers that deliver asynchronously, and
//! clients. A seeded scheduler interleaves every step a core asks for — load, commit, run
//! activities, produce, settle — with everything else:
//!
//! - **duplicate deliveries**: a produce appends a record twice; a client retries a send;
//! - **reordering across instances**: partitions advance independently, in random order;
//! - **asynchronous produce**: what a core produced reaches the log whenever the producer
//!   delivers it, in order; only a settle waits for all of it;
//! - **racing workers**: a rebalance hands a partition to another worker while the old one
//!   finishes its group as a zombie (both commit to the same instances → conflicts → partial
//!   reruns; the zombie's local rounds are fenced out);
//! - **crashes**: a worker loses its cores (caches, groups in flight) and a suffix of what its
//!   producer held, at any step — between commit and produce, between produce and offset
//!   store, inside a local round — and restarts from the committed offsets;
//! - **store failures**: a load or commit fails (a commit possibly after it was applied); the
//!   driver abandons the group and fetches its records again.
//!
//! Every event acts for a principal, as the management API sends them: the classic workloads as
//! an `operator`, the access workload as alice (who owns vaults), bob (to whom alice shares one)
//! and mallory (who tries everything alice did not allow, also with no principal at all: she
//! burns the id of bob's deposit first, parks a withdrawal until the year 3000, and at the end
//! sends bob's sealed deposit again, as captured, once its id has left the window — at once or
//! after the freshness of sealed events). The engine enforces [`Policy::enforcing`]; at the end,
//! nothing mallory sent changed anything.
//!
//! At quiescence, invariants are checked; the same seed always gives the same trace hash.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::task::{Context, Poll, Waker};

use durable_processor::access::{with_principal, Policy, Principal, FORBIDDEN};
use durable_processor::engine::Limits;
use durable_processor::examples::{self, Account, ApprovalInput, Counter, TransferInput, TransferOutcome};
use durable_processor::history::{Body, CommandKind, InstanceRecord, OrchestrationStatus};
use durable_processor::id::InstanceId;
use durable_processor::partition::{timer_records, Done, Io, Outgoing, Partition, Ran, Record, Settings, Topic};
use durable_processor::quota;
use durable_processor::store::{CommitOutcome, MemoryStore, Store};
use durable_processor::{Effect, Engine, Registry};
use durable_schemas::{AccessChange, Envelope, Event, Payload};
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
    /// `Approval` instances (retries, timers, external events, entity calls, a sub-orchestration;
    /// every second one is suspended before its approval arrives and resumed after).
    pub approvals: usize,
    /// `Ticker` instances (continue-as-new with buffered events).
    pub tickers: usize,
    /// `Account` entities of the bank workload.
    pub accounts: usize,
    /// `Transfer` orchestrations between random pairs of accounts (about one in four is also
    /// terminated at a random moment).
    pub transfers: usize,
    /// alice's vault accounts of the access workload (she moves money between them).
    pub vaults: usize,
    /// What mallory tries against them (withdrawals, transfers out, taking ownership, sharing,
    /// terminating alice's transfers, anonymous deposits).
    pub intrusions: usize,
    /// `Locker` entities each of quinn and rita tries to create, over their limit of
    /// [`LOCKER_LIMIT`] live lockers: quinn's stay, rita's are deleted right after.
    pub lockers: usize,
    /// Generated programs ([`crate::gen`]): random orchestrations written from the seed, each
    /// expected to end as it ends in the Harness.
    pub programs: usize,
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
            vaults: 3,
            intrusions: 8,
            lockers: 4,
            programs: 3,
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
    /// Store calls that fail (a commit sometimes after it was applied).
    pub store_errors: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self { duplicates: true, crashes: true, rebalances: true, store_errors: true }
    }
}

/// How the cores run: every mode must end every workload the same (the generated programs as in
/// the Harness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Production's defaults: deferred local commits, the record cache, live orchestrations.
    Local,
    /// Every local step committed on its own.
    NoDefer,
    /// No record cache: every step loads its record.
    NoCache,
    /// No live orchestrations: every step replays the history.
    NoLive,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 4] = [Mode::Local, Mode::NoDefer, Mode::NoCache, Mode::NoLive];

    /// The mode a seed runs in by default: they take turns.
    pub fn of_seed(seed: u64) -> Mode {
        Self::ALL[(seed % Self::ALL.len() as u64) as usize]
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::NoDefer => "no-defer",
            Mode::NoCache => "no-cache",
            Mode::NoLive => "no-live",
        }
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
    /// Fence local rounds' commits with the worker's epoch, as the runtime does (the core asks
    /// for it; this driver obeys). Off only to show what the fence prevents (a zombie's local commit replacing an outbox behind the
    /// next owner's back: a hung orchestration).
    pub fence_local_commits: bool,
    /// How the cores run.
    pub mode: Mode,
    /// Programs to run beside the generated ones (a program a test names).
    pub programs: Vec<crate::gen::Program>,
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
            mode: Mode::of_seed(seed),
            programs: Vec::new(),
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
    /// Instances the cores stepped again after losing a commit (partial reruns).
    pub reruns: usize,
    /// Instance records the cores found in their caches instead of loading them.
    pub cache_hits: usize,
    /// Orchestration steps that continued live code, each checked against a replay of the same
    /// record (a difference is a violation).
    pub live_steps: usize,
    /// Local steps whose commit was left to their caller's next step.
    pub deferred: usize,
    /// Worker crashes injected.
    pub crashes: usize,
}

/// The registry the simulator runs: the bundled examples and the interpreter of generated
/// programs.
pub fn registry() -> Registry {
    crate::gen::register(examples::register(Registry::new())).entity("Locker", examples::counter())
}

/// Most live `Locker` entities one user may have (the creation-limit workload).
pub const LOCKER_LIMIT: u32 = 2;

/// The policy the simulated engine enforces: principals required, and the locker limit.
pub fn policy() -> Policy {
    let mut policy = Policy::enforcing();
    policy.limits.insert("Locker".into(), LOCKER_LIMIT);
    policy
}

fn now_or_never<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("simulated I/O must complete immediately"),
    }
}

/// What a worker can do next.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Read records of a partition and begin a group.
    Fetch(u32),
    /// Take a core's next step.
    Step(Which),
    /// Let the producer deliver some of what it holds.
    Deliver,
}

/// A partition core on a worker: the owner's, or a zombie's finishing its group after the
/// partition moved.
struct Core {
    core: Partition,
    zombie: bool,
}

#[derive(Default)]
struct Worker {
    /// Next offset to fetch, per owned partition.
    positions: BTreeMap<u32, usize>,
    /// The cores of the partitions this worker owns, created (and fenced) at the partition's
    /// first fetch since it was assigned or the worker restarted, as the runtime does when a
    /// partition's worker starts.
    cores: BTreeMap<u32, Core>,
    /// Cores of partitions that moved away while a group was in flight: they finish it.
    zombies: Vec<(u32, Core)>,
    /// Records enqueued on this worker's producer and not yet in the log: (partition, bytes).
    /// The idempotent producer keeps their order; a crash loses a suffix of them.
    producing: VecDeque<(usize, Vec<u8>)>,
}

/// Which core an action concerns.
#[derive(Debug, Clone, Copy)]
enum Which {
    Owned(u32),
    Zombie(usize),
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
    /// Every dead letter produced, as (reason, payload), to count repeats once.
    dead_letter_seen: BTreeSet<(String, Vec<u8>)>,
    conflicts: usize,
    reruns: usize,
    cache_hits: usize,
    live_steps: usize,
    deferred: usize,
    /// Live steps that differed from a replay of the same record.
    live_mismatches: Vec<String>,
    crashes: usize,
    /// Encodings of every event in a committed outbox: nothing else may leave a step.
    committed_emits: BTreeSet<Vec<u8>>,
    /// The bank workload: opening deposits and transfers (and which were terminated).
    bank: Bank,
    /// The access workload.
    vaults: Vaults,
    /// The generated programs: instance id, and how the Harness ended it and its cells.
    programs: Vec<Generated>,
}

/// A generated program and what the Harness made of it.
#[derive(Debug)]
struct Generated {
    id: String,
    key: String,
    ending: crate::gen::Ending,
    cells: Vec<(String, i64)>,
}

/// What the bank workload sent, to check the books at the end.
#[derive(Debug, Default)]
struct Bank {
    deposits: BTreeMap<String, i64>,
    transfers: Vec<(String, TransferInput, bool)>,
}

/// What the access workload sent.
#[derive(Debug, Default)]
struct Vaults {
    /// Opening deposits (alice's), and bob's deposit into the vault alice shared with him.
    deposits: BTreeMap<String, i64>,
    /// alice's transfers between her vaults.
    transfers: Vec<(String, TransferInput)>,
    /// mallory's transfers out of alice's vaults (each must fail `Forbidden`).
    thefts: Vec<String>,
    /// Events mallory (or nobody) sent: each must be refused.
    intrusions: usize,
    /// The id of bob's deposit: mallory captures the sealed record it travels in…
    bobs_deposit: Option<String>,
    /// …as it was sent,
    captured: Option<Envelope>,
    /// …and sends it again once everything else is done (its id has left vault0's window):
    /// `Some(true)` after the clock passed the freshness of sealed events, `Some(false)` at once.
    /// Either way the copy must be refused, and bob's deposit counts once.
    replayed: Option<bool>,
}

/// The opening balance of each vault.
const VAULT_OPENING: i64 = 100;
/// What bob deposits into the vault alice shared with him.
const BOB_DEPOSIT: i64 = 7;

const T0: i64 = 1_700_000_000_000;

/// How many outside ids an instance remembers, in the simulation (bob's deposits turn vault0's
/// window over).
const DEDUP_WINDOW: usize = 8;

/// How old a sealed event may be when it is applied, in the simulation (a minute: clients' events
/// are stamped as they are sent, so none of theirs comes near it).
const SEALED_AGE_MS: i64 = 60_000;

impl World {
    fn new(config: Config) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        let partitions = config.partitions as usize;
        let workers = (0..config.workers).map(|_| Worker::default()).collect();
        let mut world = Self {
            rng,
            now: T0,
            engine: Engine::new(registry()).with_policy(policy()).with_limits(Limits {
                max_sealed_age_ms: SEALED_AGE_MS,
                dedup_window: DEDUP_WINDOW,
                ..Limits::default()
            }),
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
            dead_letter_seen: BTreeSet::new(),
            conflicts: 0,
            reruns: 0,
            cache_hits: 0,
            live_steps: 0,
            deferred: 0,
            live_mismatches: Vec::new(),
            crashes: 0,
            committed_emits: BTreeSet::new(),
            bank: Bank::default(),
            vaults: Vaults::default(),
            programs: Vec::new(),
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

    /// A client's event on behalf of the operator who runs the classic workloads.
    fn client_event(&self, n: usize, target: String, body: Event) -> Envelope {
        self.event_as(Some(&operator()), n, target, body)
    }

    /// A client's event on behalf of `principal` (`None`: anonymous), as the API sends it.
    fn event_as(&self, principal: Option<&Principal>, n: usize, target: String, body: Event) -> Envelope {
        let body = match principal {
            Some(p) => with_principal(body, p),
            None => body,
        };
        let mut e = Envelope::new(format!("client-{}-{n}", self.config.seed), target, self.now, body);
        e.source = Some("client:sim".into());
        e
    }

    /// Client events, per instance in order, instances interleaved at random.
    fn workload(&mut self) -> VecDeque<Envelope> {
        let s = self.config.scale;
        let mut per_instance: Vec<VecDeque<Envelope>> = Vec::new();
        let n = std::cell::Cell::new(0);
        let next = |world: &World, target: String, body: Event| {
            n.set(n.get() + 1);
            world.client_event(n.get(), target, body)
        };
        let next_as = |world: &World, principal: Option<&Principal>, target: String, body: Event| {
            n.set(n.get() + 1);
            world.event_as(principal, n.get(), target, body)
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
            if i % 2 == 1 {
                // An operator suspends it before the approval comes and resumes it after: the
                // approval (and whatever else arrives meanwhile) is kept and applied on resume.
                let suspend = next(self, id.clone(), Event::Suspend { reason: "simulated operator".into() });
                let raise = next(self, id.clone(), Event::RaiseEvent { name: "approve".into(), payload: json(&true) });
                let resume = next(self, id, Event::Resume { reason: String::new() });
                per_instance.push([start, suspend, raise, resume].into());
                continue;
            }
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
        // The access workload: alice's vaults, one shared with bob, and mallory's attempts.
        let (alice, bob, mallory) = (principal("alice"), principal("bob"), principal("mallory"));
        let vault = |i: usize| InstanceId::entity("Account", format!("vault{i}")).canonical();
        let deposit = |amount: i64| Event::EntityOperation { operation: "deposit".into(), input: json(&amount) };
        for i in 0..s.vaults {
            self.vaults.deposits.insert(format!("vault{i}"), VAULT_OPENING);
            out.push_back(next_as(self, Some(&alice), vault(i), deposit(VAULT_OPENING)));
        }
        if s.vaults > 0 {
            let share = AccessChange::ShareWithUser { user: "bob".into(), operations: vec!["signal".into()] };
            let shared = next_as(self, Some(&alice), vault(0), Event::Access(share));
            let bobs = next_as(self, Some(&bob), vault(0), deposit(BOB_DEPOSIT));
            *self.vaults.deposits.get_mut("vault0").expect("opened") += BOB_DEPOSIT;
            // mallory sends, first, a refused event under the id bob's deposit will have: it
            // must not burn it (bob's deposit still applies, the books say so).
            let mut burn = next_as(
                self,
                Some(&mallory),
                vault(0),
                Event::EntityOperation { operation: "withdraw".into(), input: json(&1i64) },
            );
            burn.id = bobs.id.clone();
            self.vaults.bobs_deposit = Some(bobs.id.clone());
            self.vaults.intrusions += 1;
            let mut events = VecDeque::from([shared, burn, bobs]);
            // bob's small deposits after it push its id out of vault0's window.
            for _ in 0..DEDUP_WINDOW {
                events.push_back(next_as(self, Some(&bob), vault(0), deposit(1)));
                *self.vaults.deposits.get_mut("vault0").expect("opened") += 1;
            }
            per_instance.push(events);
        }
        for j in 0..if s.vaults >= 2 { s.vaults } else { 0 } {
            let input =
                TransferInput { from: format!("vault{j}"), to: format!("vault{}", (j + 1) % s.vaults), amount: 10 };
            let id = InstanceId::orchestration("Transfer", format!("alice{j}")).canonical();
            per_instance.push(
                [next_as(self, Some(&alice), id.clone(), Event::StartOrchestration { input: json(&input) })].into(),
            );
            self.vaults.transfers.push((id, input));
        }
        for k in 0..if s.vaults > 0 { s.intrusions } else { 0 } {
            let target = self.rng.gen_range(0..s.vaults);
            let event = match self.rng.gen_range(0..7) {
                0 => next_as(
                    self,
                    Some(&mallory),
                    vault(target),
                    Event::EntityOperation { operation: "withdraw".into(), input: json(&50i64) },
                ),
                1 => {
                    let input = TransferInput { from: format!("vault{target}"), to: "mallory".into(), amount: 50 };
                    let id = InstanceId::orchestration("Transfer", format!("mallory{k}")).canonical();
                    self.vaults.thefts.push(id.clone());
                    next_as(self, Some(&mallory), id, Event::StartOrchestration { input: json(&input) })
                }
                2 => next_as(
                    self,
                    Some(&mallory),
                    vault(target),
                    Event::Access(AccessChange::TransferOwnership { user: "mallory".into() }),
                ),
                // bob may signal vault0, not share it.
                3 => next_as(
                    self,
                    Some(&bob),
                    vault(0),
                    Event::Access(AccessChange::ShareWithUser {
                        user: "mallory".into(),
                        operations: vec!["signal".into()],
                    }),
                ),
                4 if s.vaults >= 2 => {
                    let id = InstanceId::orchestration("Transfer", format!("alice{}", target % s.vaults)).canonical();
                    next_as(self, Some(&mallory), id, Event::Terminate { reason: "mallory".into() })
                }
                // A withdrawal parked until the year 3000: refused before anything is parked (a
                // timer left pending at the end is a violation).
                5 => {
                    let mut e = next_as(
                        self,
                        Some(&mallory),
                        vault(target),
                        Event::EntityOperation { operation: "withdraw".into(), input: json(&50i64) },
                    );
                    e.body = Event::WithDelay { fire_at: 32_503_680_000_000, inner: Box::new(e.body) };
                    e
                }
                _ => next_as(self, None, vault(target), deposit(1_000_000)),
            };
            self.vaults.intrusions += 1;
            per_instance.push([event].into());
        }
        // The creation-limit workload: quinn's lockers stay (only LOCKER_LIMIT of them may be
        // created), rita's are deleted right after their first operation (their places come back).
        let locker = |user: &str, i: usize| InstanceId::entity("Locker", format!("{user}{i}")).canonical();
        let add = Event::EntityOperation { operation: "add".into(), input: json(&1i64) };
        let delete = Event::EntityOperation { operation: "delete".into(), input: json(&()) };
        for i in 0..s.lockers {
            let (quinn, rita) = (principal("quinn"), principal("rita"));
            per_instance.push([next_as(self, Some(&quinn), locker("quinn", i), add.clone())].into());
            let adds = next_as(self, Some(&rita), locker("rita", i), add.clone());
            let deletes = next_as(self, Some(&rita), locker("rita", i), delete.clone());
            per_instance.push([adds, deletes].into());
        }
        // Generated programs: each started, its events raised in order.
        let given = self.config.programs.clone();
        for i in 0..s.programs + given.len() {
            let program = match given.get(i.wrapping_sub(s.programs)) {
                Some(p) if i >= s.programs => p.clone(),
                _ => crate::gen::program(&mut self.rng, crate::gen::Shape { depth: 2, events: true }),
            };
            let key = format!("g{i}");
            let id = InstanceId::orchestration(crate::gen::GEN, key.clone()).canonical();
            let (ending, cells) = crate::gen::expected(&program, &key);
            let mut events: VecDeque<Envelope> =
                [next(self, id.clone(), Event::StartOrchestration { input: crate::gen::start_input(&program) })].into();
            for (name, value) in crate::gen::raises(&program) {
                events.push_back(next(self, id.clone(), Event::RaiseEvent { name, payload: json(&value) }));
            }
            self.note(|| format!("{id} runs {program:?}"));
            self.programs.push(Generated { id, key, ending, cells });
            per_instance.push(events);
        }
        while per_instance.iter().any(|q| !q.is_empty()) {
            let live: Vec<usize> = (0..per_instance.len()).filter(|&i| !per_instance[i].is_empty()).collect();
            let pick = live[self.rng.gen_range(0..live.len())];
            out.push_back(per_instance[pick].pop_front().expect("non-empty"));
        }
        out
    }

    fn partition_of(&self, key: &[u8]) -> u32 {
        durable_processor::id::partition_for_key(key, self.config.partitions)
    }

    /// Append a record to partition `p`'s log (sometimes twice: a producer retry).
    fn append(&mut self, p: usize, bytes: Vec<u8>) {
        self.mix(&bytes);
        self.logs[p].push(bytes.clone());
        if self.config.faults.duplicates && self.rng.gen_ratio(1, 20) {
            self.logs[p].push(bytes);
            self.note(|| format!("duplicate record in p{p}"));
        }
    }

    fn produce(&mut self, envelope: &Envelope) {
        let p = self.partition_of(envelope.target.as_bytes()) as usize;
        self.append(p, envelope.encode());
    }

    fn assign(&mut self, partition: u32, worker: usize) {
        self.owner[partition as usize] = worker;
        let committed = self.committed[partition as usize];
        let w = &mut self.workers[worker];
        w.cores.remove(&partition);
        w.positions.insert(partition, committed);
    }

    fn settings(&self, partition: u32) -> Settings {
        Settings {
            partition,
            partitions: self.config.partitions,
            events_topic: "sim.events".into(),
            max_event_bytes: 1 << 20,
            spread_activities: self.config.local_rounds == 0,
            local_rounds: self.config.local_rounds,
            defer_local: self.config.mode != Mode::NoDefer,
            cache_limit: if self.config.mode == Mode::NoCache { 0 } else { Settings::CACHE_LIMIT },
            cache_bytes: Settings::CACHE_BYTES,
            live_limit: if self.config.mode == Mode::NoLive { 0 } else { Settings::LIVE_LIMIT },
            check_live: true,
            purge_grace_ms: Settings::PURGE_GRACE_MS,
        }
    }

    /// Every action that can be taken now: a worker fetches a partition, a core takes its next
    /// step, a producer delivers what it holds.
    fn work(&self) -> Vec<(usize, Action)> {
        let mut work = Vec::new();
        for (w, worker) in self.workers.iter().enumerate() {
            for (&p, &pos) in &worker.positions {
                match worker.cores.get(&p) {
                    Some(c) if c.core.busy() => work.push((w, Action::Step(Which::Owned(p)))),
                    _ if pos < self.logs[p as usize].len() => work.push((w, Action::Fetch(p))),
                    _ => {}
                }
            }
            for z in 0..worker.zombies.len() {
                work.push((w, Action::Step(Which::Zombie(z))));
            }
            if !worker.producing.is_empty() {
                work.push((w, Action::Deliver));
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
                    None if self.vaults.captured.is_some() => {
                        self.replay();
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
                    Action::Fetch(p) => self.fetch(w, p),
                    Action::Step(which) => self.step(w, which),
                    Action::Deliver => self.deliver(w, false),
                }
            }
        }
        violations.extend(self.live_mismatches.drain(..).map(|m| format!("a live step differs from a replay: {m}")));
        if violations.is_empty() {
            violations = self.check();
        }
        Outcome {
            trace_hash: self.hash,
            actions,
            violations,
            trace: std::mem::take(&mut self.trace),
            conflicts: self.conflicts,
            reruns: self.reruns,
            cache_hits: self.cache_hits,
            live_steps: self.live_steps,
            deferred: self.deferred,
            crashes: self.crashes,
        }
    }

    fn send_client(&mut self) {
        let mut e = self.clients.pop_front().expect("checked");
        // The API stamps what it seals as it sends it.
        e.timestamp = self.now;
        self.note(|| format!("client sends {} {} to {}", e.id, e.body.core().name(), e.target));
        self.produce(&e);
        if self.vaults.bobs_deposit.as_ref() == Some(&e.id) && self.vaults.replayed.is_none() {
            self.vaults.captured = Some(e.clone());
        }
        if self.config.faults.duplicates && self.rng.gen_ratio(1, 10) {
            self.note(|| format!("client retries {}", e.id));
            self.produce(&e);
        }
    }

    /// mallory sends the sealed record she captured again: at once or after the freshness of
    /// sealed events has passed.
    fn replay(&mut self) {
        let e = self.vaults.captured.take().expect("checked");
        let stale = self.rng.gen_bool(0.5);
        if stale {
            self.now += SEALED_AGE_MS + 1;
        }
        self.vaults.replayed = Some(stale);
        self.vaults.intrusions += 1;
        self.note(|| format!("mallory sends bob's sealed {} again (stale: {stale})", e.id));
        self.produce(&e);
    }

    /// The worker's producer delivers what it holds to the logs: all of it (`all`, an
    /// acknowledgement awaited), or a random prefix (records on their way).
    fn deliver(&mut self, w: usize, all: bool) {
        let held = self.workers[w].producing.len();
        let n = if all { held } else { self.rng.gen_range(1..=held) };
        for _ in 0..n {
            let (p, bytes) = self.workers[w].producing.pop_front().expect("held");
            self.append(p, bytes);
        }
        if n > 0 {
            self.note(|| format!("worker {w}'s producer delivers {n} of {held} records"));
        }
    }

    fn crash(&mut self) {
        let w = self.rng.gen_range(0..self.workers.len());
        self.crashes += 1;
        self.mix(&[w as u8, 0xC0]);
        // Records on their way may or may not get through: a prefix does, in order.
        let held = self.workers[w].producing.len();
        let through = self.rng.gen_range(0..=held);
        for _ in 0..through {
            let (p, bytes) = self.workers[w].producing.pop_front().expect("held");
            self.append(p, bytes);
        }
        let worker = &mut self.workers[w];
        worker.producing.clear();
        let busy: Vec<String> =
            worker.cores.iter().filter(|(_, c)| c.core.busy()).map(|(p, _)| format!("p{p}")).collect();
        worker.cores.clear();
        worker.zombies.clear();
        self.note(|| {
            format!(
                "worker {w} crashes (groups in flight: {}; {through} of {held} records got through)",
                busy.join(", ")
            )
        });
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
        let went_on = match old.cores.remove(&p) {
            Some(mut c) if c.core.busy() && zombie => {
                c.zombie = true;
                old.zombies.push((p, c));
                true
            }
            _ => false,
        };
        self.note(|| {
            format!(
                "p{p} moves from worker {from} to {to}{}",
                if went_on { " (old owner goes on as a zombie)" } else { "" }
            )
        });
        self.assign(p, to);
    }

    fn release_timers(&mut self) {
        for p in 0..self.config.partitions {
            let released = now_or_never(self.store.claim_due_timers(p, self.now, 64)).expect("memory store");
            let Some(up_to) = released.last().map(|t| t.seq) else { continue };
            for record in timer_records(p, "sim.events", &released) {
                self.note(|| format!("timer of p{p} releases an event for {}", String::from_utf8_lossy(&record.key)));
                self.output(usize::MAX, p, record);
            }
            // A crash between the produce and the ack re-releases the same timers later.
            if self.config.faults.crashes && self.rng.gen_ratio(1, 10) {
                self.note(|| format!("timer owner of p{p} crashes before ack"));
                continue;
            }
            now_or_never(self.store.ack_timers(p, up_to)).expect("memory store");
        }
    }

    /// A record a core (of worker `w`, on partition `p`) asked to produce: events go to the
    /// worker's producer (`w == usize::MAX`: straight to the log), dead letters are violations
    /// (the workloads make none), state records are dropped.
    fn output(&mut self, w: usize, p: u32, record: Outgoing) {
        match record.topic {
            Topic::Events => {
                let to = record.partition.unwrap_or_else(|| self.partition_of(&record.key)) as usize;
                if w == usize::MAX {
                    self.append(to, record.payload);
                } else {
                    self.workers[w].producing.push_back((to, record.payload));
                }
            }
            Topic::Dead => {
                // Dead letters leave with their outbox, at least once: a resend repeats one with
                // the same reason and payload, which is the same dead letter. So does every copy
                // of a refused event (a client's retry, a producer's duplicate): a refused event
                // is not remembered, so each copy is refused again.
                let reason = record.reason().unwrap_or_default().to_owned();
                if self.dead_letter_seen.insert((reason.clone(), record.payload.clone())) {
                    self.dead_letters.push(format!("p{p}: {reason}"));
                }
            }
            Topic::State => {}
        }
    }

    fn fetch(&mut self, w: usize, p: u32) {
        let start = self.workers[w].positions[&p];
        let len = self.logs[p as usize].len();
        let end = (start + self.rng.gen_range(1..=8)).min(len);
        let records: Vec<Record> = (start..end)
            .map(|offset| Record {
                offset: offset as i64,
                key: None,
                payload: Some(self.logs[p as usize][offset].clone()),
                // Every record in the simulated logs is one a core or a client of the protocol
                // wrote (the trust boundary is the core's unit tests' and the e2e tests' job).
                sealed: true,
            })
            .collect();
        if !self.workers[w].cores.contains_key(&p) {
            let epoch = now_or_never(self.store.fence(p)).expect("memory store");
            self.note(|| format!("worker {w} fences p{p}: epoch {epoch}"));
            let core = Partition::new(self.settings(p), self.engine.clone(), epoch);
            self.workers[w].cores.insert(p, Core { core, zombie: false });
        }
        self.note(|| format!("worker {w} fetches p{p}@{start}..{end}"));
        self.workers[w].positions.insert(p, end);
        let now = self.now;
        self.workers[w].cores.get_mut(&p).expect("just made").core.begin(records, now);
    }

    /// One step of a core: do what it asks, answer it.
    fn step(&mut self, w: usize, which: Which) {
        let (p, mut c) = match which {
            Which::Owned(p) => (p, self.workers[w].cores.remove(&p).expect("listed")),
            Which::Zombie(z) => self.workers[w].zombies.remove(z),
        };
        let io = c.core.poll();
        let mut done = false;
        match io {
            Io::Load(ids) => {
                if self.store_fails() {
                    self.note(|| format!("worker {w}: the store fails a load of p{p}"));
                    self.abandon(w, p, &mut c);
                } else {
                    let stored = now_or_never(self.store.load(p, &ids)).expect("memory store");
                    self.note(|| format!("worker {w} loads {} instances of p{p}", ids.len()));
                    c.core.loaded(stored);
                }
            }
            Io::Commit { writes, epoch } => {
                let fail = self.store_fails();
                // A failed commit may still have been applied (the reply was lost).
                let applied = !fail || self.rng.gen_bool(0.5);
                let mut outcomes = Vec::new();
                if applied {
                    let before: Vec<Option<InstanceRecord>> = writes
                        .iter()
                        .map(|write| {
                            self.store.get(&write.id).map(|s| InstanceRecord::from_blob(&s.blob).expect("valid"))
                        })
                        .collect();
                    let after: Vec<String> = writes.iter().map(|w| w.id.clone()).collect();
                    outcomes = match epoch {
                        Some(epoch) if self.config.fence_local_commits => {
                            now_or_never(self.store.commit_fenced(p, epoch, writes))
                        }
                        _ => now_or_never(self.store.commit(p, writes)),
                    }
                    .expect("memory store");
                    for ((id, before), outcome) in after.into_iter().zip(before).zip(&outcomes) {
                        if matches!(outcome, CommitOutcome::Committed { .. }) {
                            // What the store holds now: a whole blob, or one with a delta appended.
                            let stored = self.store.get(&id).expect("just committed");
                            let after = InstanceRecord::from_blob(&stored.blob).expect("valid");
                            self.observe_commit(id, before.as_ref(), &after);
                        }
                    }
                    let conflicts = outcomes.iter().filter(|o| **o == CommitOutcome::Conflict).count();
                    self.mix(&[0xCF, conflicts as u8]);
                    self.note(|| {
                        let fenced = epoch.map_or(String::new(), |e| format!(" fenced with epoch {e}"));
                        format!("worker {w} commits {} writes of p{p}{fenced}: {conflicts} conflicts", outcomes.len())
                    });
                }
                if fail {
                    self.note(|| format!("worker {w}: the store fails a commit of p{p} (applied: {applied})"));
                    self.abandon(w, p, &mut c);
                } else {
                    c.core.committed(outcomes);
                }
            }
            Io::Run(invocations) => {
                let results: Vec<Ran> = invocations
                    .iter()
                    .map(|req| {
                        let future =
                            self.engine.registry().run_activity(req.id.name(), req.context(), req.input.clone());
                        Ran::Returned(now_or_never(future.expect("the core checks the registry")))
                    })
                    .collect();
                self.note(|| format!("worker {w} runs {} activities of p{p}", results.len()));
                c.core.ran(results, self.now);
            }
            Io::Produce(records) => {
                self.note(|| format!("worker {w} produces {} records for p{p}", records.len()));
                for r in records {
                    self.output(w, p, r);
                }
            }
            Io::Settle => {
                self.deliver(w, true);
                c.core.settled();
            }
            Io::Done(Done { last, rest }) => {
                done = true;
                if !c.zombie && self.owner[p as usize] == w {
                    let committed = &mut self.committed[p as usize];
                    *committed = (*committed).max(last as usize + 1);
                    self.note(|| format!("worker {w} stores offset p{p}={}", last + 1));
                    if let Some(first) = rest.first() {
                        self.note(|| format!("worker {w} ends its group of p{p} early: a resend comes first"));
                        self.workers[w].positions.insert(p, first.offset as usize);
                    }
                } else {
                    self.note(|| format!("zombie worker {w} cannot store offset p{p}={}", last + 1));
                }
            }
        }
        let stats = c.core.take_stats();
        self.conflicts += stats.conflicts as usize;
        self.reruns += stats.reruns as usize;
        self.cache_hits += stats.cache_hits as usize;
        self.live_steps += stats.live_steps as usize;
        self.deferred += stats.deferred as usize;
        self.live_mismatches.extend(c.core.take_mismatches());
        match which {
            Which::Owned(p) => {
                self.workers[w].cores.insert(p, c);
            }
            Which::Zombie(z) if !done && c.core.busy() => self.workers[w].zombies.insert(z, (p, c)),
            Which::Zombie(_) => {}
        }
    }

    /// Whether the store fails this call (a transient error).
    fn store_fails(&mut self) -> bool {
        self.config.faults.store_errors && self.rng.gen_ratio(1, 100)
    }

    /// The driver's answer to a transient failure: abandon the group; its records are fetched
    /// again (a zombie's are the next owner's).
    fn abandon(&mut self, w: usize, p: u32, c: &mut Core) {
        let records = c.core.abandon();
        if !c.zombie {
            if let Some(first) = records.first() {
                self.workers[w].positions.insert(p, first.offset as usize);
            }
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
        let mut refused = 0;
        let mut over_limit = BTreeMap::<&str, usize>::new();
        for d in &self.dead_letters {
            let limited = ["quinn", "rita"].into_iter().find(|u| d.contains(&format!(": Forbidden: {u} has ")));
            if let Some(user) = limited.filter(|_| d.contains("the most one user may have")) {
                *over_limit.entry(user).or_default() += 1;
            } else if d.contains(": Forbidden: ")
                || self.vaults.replayed.is_some() && d.contains("cannot be told from a replay")
            {
                refused += 1;
            } else {
                v.push(format!("unexpected dead letter {d}"));
            }
        }
        self.check_lockers(&over_limit, &mut v);
        if self.vaults.replayed.is_some()
            && !self.dead_letters.iter().any(|d| d.contains("cannot be told from a replay"))
        {
            v.push("mallory's copy of bob's sealed deposit was not refused".into());
        }
        if refused > self.vaults.intrusions {
            v.push(format!("{refused} events refused, but only {} were not allowed", self.vaults.intrusions));
        }
        self.check_vaults(&mut v);
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
        self.check_programs(&mut v);
        for id in self.store.ids() {
            let r = record(&id).expect("listed");
            if let Body::Orchestration(h) = &r.body {
                if !h.status.is_finished() {
                    let answered: BTreeSet<u32> = h.log.iter().map(|e| e.slot).collect();
                    let waiting: Vec<String> = h
                        .commands
                        .iter()
                        .enumerate()
                        .filter(|(slot, c)| {
                            !answered.contains(&(*slot as u32))
                                && !matches!(c.kind, CommandKind::SignalEntity | CommandKind::StartOrchestration)
                        })
                        .map(|(slot, c)| format!("{slot}:{:?} {}", c.kind, c.name))
                        .collect();
                    v.push(format!(
                        "{id}: stuck in {} with nothing on its way: unanswered [{}] of {} commands",
                        h.status.word(),
                        waiting.join(", "),
                        h.commands.len()
                    ));
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
    /// Every generated program ended as in the Harness, and its cells hold what the Harness's do.
    fn check_programs(&self, v: &mut Vec<String>) {
        let load = |id: &str| self.store.get(id).map(|s| InstanceRecord::from_blob(&s.blob).expect("valid blob"));
        for g in &self.programs {
            let record = load(&g.id);
            let ending = crate::gen::Ending::of(record.as_ref().and_then(|r| r.orchestration()).map(|h| &h.status));
            if ending != g.ending {
                v.push(format!("{}: ended {ending:?}, the Harness ended it {:?}", g.id, g.ending));
            }
            let cells = crate::gen::cells(&g.key, |id| {
                load(&id.canonical())
                    .and_then(|r| r.entity()?.state.as_ref()?.decode::<crate::gen::Cell>().ok())
                    .map(|c| c.value)
            });
            if cells != g.cells {
                v.push(format!("{}: cells {cells:?}, the Harness's {:?}", g.id, g.cells));
            }
        }
    }

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

impl World {
    /// The creation limits held: each user's ledger lists exactly its live lockers, charged to
    /// it and owned by it, never more than [`LOCKER_LIMIT`]; quinn (whose lockers stay) has
    /// exactly that many and was refused for each other one; rita (who deletes hers) has none
    /// live and her ledger is empty — every place came back.
    fn check_lockers(&self, over_limit: &BTreeMap<&str, usize>, v: &mut Vec<String>) {
        let s = self.config.scale;
        let load = |id: &str| self.store.get(id).map(|s| InstanceRecord::from_blob(&s.blob).expect("valid blob"));
        for user in ["quinn", "rita"] {
            let ledger_id = quota::ledger_of(&InstanceId::entity("Locker", "x"), user).canonical();
            let ledger: BTreeSet<String> = load(&ledger_id)
                .and_then(|r| r.entity()?.state.as_ref()?.decode::<quota::Ledger>().ok())
                .map(|l| l.instances)
                .unwrap_or_default();
            let mut live = BTreeSet::new();
            for i in 0..s.lockers {
                let id = InstanceId::entity("Locker", format!("{user}{i}")).canonical();
                let Some(record) = load(&id) else { continue };
                if record.quota.waiting.is_some() {
                    v.push(format!("{id}: still waits for its ledger"));
                }
                if record.is_live() {
                    live.insert(id.clone());
                    if record.quota.charged.as_deref() != Some(user) || !record.access.owners.contains(user) {
                        v.push(format!(
                            "{id}: live but charged to {:?}, owned by {:?}",
                            record.quota.charged, record.access.owners
                        ));
                    }
                } else if record.quota.charged.is_some() {
                    v.push(format!("{id}: not live but still charged to {:?}", record.quota.charged));
                }
            }
            if ledger != live {
                v.push(format!("{user}'s ledger lists {ledger:?} but {live:?} are live"));
            }
            if live.len() > LOCKER_LIMIT as usize {
                v.push(format!("{user} has {} live lockers, over the limit of {LOCKER_LIMIT}", live.len()));
            }
            let refusals = over_limit.get(user).copied().unwrap_or(0);
            let want_live = s.lockers.min(LOCKER_LIMIT as usize);
            if user == "quinn" && (live.len() != want_live || refusals != s.lockers - want_live) {
                v.push(format!(
                    "quinn has {} live lockers and {refusals} refusals; expected {want_live} and {}",
                    live.len(),
                    s.lockers - want_live
                ));
            }
            if user == "rita" && (!live.is_empty() || refusals > 2 * s.lockers) {
                v.push(format!("rita has {live:?} live and {refusals} refusals"));
            }
        }
    }

    /// Nothing mallory (or an anonymous sender, or bob beyond what he was granted) sent changed
    /// anything: alice still owns every vault, only bob was granted anything (signal, on vault0),
    /// the balances are explained exactly by alice's transfers and bob's deposit, mallory's
    /// transfers failed `Forbidden` and alice's all completed.
    fn check_vaults(&self, v: &mut Vec<String>) {
        if self.vaults.deposits.is_empty() {
            return;
        }
        let load = |id: &str| self.store.get(id).map(|s| InstanceRecord::from_blob(&s.blob).expect("valid blob"));
        let mut expected = self.vaults.deposits.clone();
        for (id, input) in &self.vaults.transfers {
            match load(id).as_ref().and_then(|r| r.orchestration()).map(|h| h.status.clone()) {
                Some(OrchestrationStatus::Completed { output }) => {
                    if output.decode::<TransferOutcome>().ok() == Some(TransferOutcome::Transferred) {
                        *expected.get_mut(&input.from).expect("vault") -= input.amount;
                        *expected.get_mut(&input.to).expect("vault") += input.amount;
                    }
                }
                other => v.push(format!("{id}: alice's transfer should complete, found {other:?}")),
            }
        }
        for (key, want) in &expected {
            let id = InstanceId::entity("Account", key.clone()).canonical();
            let Some(record) = load(&id) else {
                v.push(format!("{id}: missing"));
                continue;
            };
            let balance = record.entity().and_then(|e| e.state.as_ref()?.decode::<Account>().ok()).map(|a| a.balance);
            if balance != Some(*want) {
                v.push(format!("{id}: balance {balance:?}, but alice's transfers and bob's deposit explain {want}"));
            }
            if record.access.owners != BTreeSet::from(["alice".to_owned()]) {
                v.push(format!("{id}: owners {:?}, not alice alone", record.access.owners));
            }
            let granted: Vec<&String> = record.access.users.keys().chain(record.access.roles.keys()).collect();
            let want_granted: Vec<&str> = if key == "vault0" { vec!["bob"] } else { vec![] };
            if granted != want_granted {
                v.push(format!("{id}: shared with {granted:?}, expected {want_granted:?}"));
            }
        }
        for id in &self.vaults.thefts {
            match load(id).as_ref().and_then(|r| r.orchestration()).map(|h| h.status.clone()) {
                Some(OrchestrationStatus::Failed { failure }) if failure.kind == FORBIDDEN => {}
                other => v.push(format!("{id}: mallory's transfer should fail Forbidden, found {other:?}")),
            }
        }
    }
}

fn operator() -> Principal {
    principal("operator")
}

fn principal(user: &str) -> Principal {
    Principal::new(user, Vec::<String>::new())
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

/// Run one simulation.
pub fn run(config: Config) -> Outcome {
    World::new(config).run()
}

/// Write a short report of an outcome.
pub fn describe(config: &Config, outcome: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed={} mode={} local_rounds={} partitions={} workers={} scale={:?} faults={:?} actions={} trace={:016x}",
        config.seed,
        config.mode.name(),
        config.local_rounds,
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
