//! The chaos suite: the bank and approval workloads on three processors while processors are
//! SIGKILLed and restarted every few seconds and Redis (append-only file fsynced on every write)
//! is SIGKILLed and restarted from it. At the end every invariant holds: every transfer finished
//! once and its effect is in the balances exactly once, money is conserved, no lock or queued
//! operation is left, every approval's retry timers fired and its counter was added to once, and
//! Typesense (fed by a projector that is SIGKILLed and restarted too) equals Redis.
//!
//! The schedule comes from a seed (printed; `DURABLE_CHAOS_SEED` replays the schedule, not the
//! processes' timing).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use durable_processor::examples::{self, Account, ApprovalInput, Counter, TransferInput, TransferOutcome};
use durable_processor::history::{InstanceRecord, OrchestrationStatus};
use durable_processor::id::InstanceId;
use durable_processor::store::{RedisStore, Store as _};
use rand::{Rng, SeedableRng};
use tests::e2e::{self, Client, Process, RedisServer};

const BINARY: &str = env!("CARGO_BIN_EXE_test-processor");
const PARTITIONS: u32 = 8;
const ACCOUNTS: usize = 10;
const OPENING: i64 = 1_000;

/// Reads instances straight from the chaos run's Redis (a read while it restarts is a miss).
struct Reader {
    store: RedisStore,
}

impl Reader {
    async fn record(&self, id: &str) -> Option<InstanceRecord> {
        let p = InstanceId::parse(id).expect("id").partition(PARTITIONS);
        let stored = self.store.load(p, &[id.to_owned()]).await.ok()?.remove(0)?;
        Some(InstanceRecord::from_blob(&stored.blob).expect("a readable blob"))
    }

    /// The account `id` once no lock and no queued operation is left on it (panics after 60 s).
    async fn idle_account(&self, id: &str) -> Account {
        e2e::eventually(Duration::from_secs(60), &format!("{id} is idle"), || async {
            let record = self.record(id).await?;
            let entity = record.entity()?;
            (entity.lock.is_none() && entity.queue.is_empty())
                .then(|| entity.state.as_ref()?.decode::<Account>().ok())?
        })
        .await
    }

    /// The orchestration's outcome once it finished: `Ok(output)`, or `Err` for any other end.
    async fn finished(&self, id: &str) -> Option<Result<durable_schemas::Payload, String>> {
        match self.record(id).await?.orchestration()?.status.clone() {
            OrchestrationStatus::Running => None,
            OrchestrationStatus::Completed { output } => Some(Ok(output)),
            other => Some(Err(format!("{other:?}"))),
        }
    }
}

/// Waits until each of `processors` owns partitions (panics after 90 s).
async fn every_one_owns_partitions(processors: &[Process]) {
    e2e::eventually(Duration::from_secs(90), "the processors own the partitions", || async {
        for p in processors {
            if !p.owns_partitions().await {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The events that open `keys` as accounts with [`OPENING`] each.
fn open_accounts(client: &mut Client, keys: &[String]) -> Vec<durable_schemas::Envelope> {
    let mut events = Vec::new();
    for key in keys {
        let id = InstanceId::entity("Account", key.clone());
        events.push(client.signal(&id, "open", format!("owner of {key}")));
        events.push(client.signal(&id, "deposit", OPENING));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bank_survives_processor_and_redis_kills() {
    let seed: u64 = std::env::var("DURABLE_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("chaos seed {seed} (DURABLE_CHAOS_SEED={seed} replays the schedule)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut redis = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let prefix = e2e::unique_prefix("chaos");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let spawn = |slot: usize, incarnation: usize| {
        let log = dir.join(format!("p{slot}-{incarnation}.log"));
        Process::spawn_with(BINARY, &prefix, PARTITIONS as i32, &log, &[("DURABLE_REDIS_URL", url.as_str())])
    };
    let mut incarnations = [0usize; 3];
    let mut processors: Vec<Process> = (0..3).map(|slot| spawn(slot, 0)).collect();
    every_one_owns_partitions(&processors).await;
    let reader = Reader { store: RedisStore::connect(&url, &prefix).await.expect("the chaos Redis") };
    let mut client = Client::new(&prefix);
    let projector_log = |incarnation: usize| dir.join(format!("projector-{incarnation}.log"));
    let mut projector = Process::spawn_projector(&prefix, &projector_log(0));

    // The accounts, and approvals whose flaky check is retried on durable timers.
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acc{i}")).collect();
    let mut setup = open_accounts(&mut client, &accounts);
    let approvals: Vec<ApprovalInput> =
        (0..10).map(|i| ApprovalInput { counter: format!("{prefix}-approval{i}"), amount: i + 1 }).collect();
    for (i, input) in approvals.iter().enumerate() {
        let start = client.start("Approval", &format!("a{i}"), input.clone());
        let approve = client.raise(&start.target, "approve", true);
        setup.push(start);
        setup.push(approve);
    }
    client.send(&setup).await;

    // Chaos: a batch of transfers every second; a processor SIGKILLed and restarted every 5 s;
    // Redis SIGKILLed and restarted from its append-only file three times.
    let mut transfers: Vec<(String, TransferInput)> = Vec::new();
    let redis_kills = [12u64, 27, 40];
    let started = Instant::now();
    for second in 1..=45u64 {
        let batch: Vec<_> = (0..4)
            .map(|_| {
                let from = rng.gen_range(0..ACCOUNTS);
                let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                let input = TransferInput {
                    from: accounts[from].clone(),
                    to: accounts[to].clone(),
                    amount: rng.gen_range(1..=400),
                };
                let start = client.start("Transfer", &format!("t{}", transfers.len()), input.clone());
                transfers.push((start.target.clone(), input));
                start
            })
            .collect();
        client.send(&batch).await;
        if second % 5 == 0 {
            let slot = rng.gen_range(0..3);
            processors[slot].kill();
            incarnations[slot] += 1;
            processors[slot] = spawn(slot, incarnations[slot]);
            eprintln!("{:>5.1} s: processor {slot} SIGKILLed and restarted", started.elapsed().as_secs_f64());
        }
        // Like a supervisor: a processor that exited (one started while Redis was down exits 2,
        // "cannot reach Redis") is started again.
        for slot in 0..3 {
            if let Some(status) = processors[slot].child.try_wait().expect("wait") {
                incarnations[slot] += 1;
                processors[slot] = spawn(slot, incarnations[slot]);
                eprintln!(
                    "{:>5.1} s: processor {slot} had exited ({status}): restarted",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if second == 22 {
            projector.kill();
            projector = Process::spawn_projector(&prefix, &projector_log(1));
            eprintln!("{:>5.1} s: the projector SIGKILLed and restarted", started.elapsed().as_secs_f64());
        }
        if redis_kills.contains(&second) {
            redis.kill();
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1_000))).await;
            redis.restart();
            eprintln!("{:>5.1} s: Redis SIGKILLed and restarted from its AOF", started.elapsed().as_secs_f64());
        }
        let next = started + Duration::from_secs(second);
        tokio::time::sleep_until(next.into()).await;
    }
    eprintln!("{:>5.1} s: chaos over; {} transfers started", started.elapsed().as_secs_f64(), transfers.len());
    for slot in 0..3 {
        if processors[slot].child.try_wait().expect("wait").is_some() {
            incarnations[slot] += 1;
            processors[slot] = spawn(slot, incarnations[slot]);
        }
    }

    // Every transfer finished, once, and its effect is in the balances exactly once.
    let mut expected: BTreeMap<String, i64> = accounts.iter().map(|a| (a.clone(), OPENING)).collect();
    let (mut moved, mut refused) = (0, 0);
    for (id, input) in &transfers {
        let outcome =
            e2e::eventually(Duration::from_secs(180), &format!("{id} finishes"), || reader.finished(id)).await;
        let outcome: TransferOutcome =
            outcome.unwrap_or_else(|e| panic!("{id} did not complete: {e}")).decode().expect("a transfer outcome");
        match outcome {
            TransferOutcome::Transferred => {
                moved += 1;
                *expected.get_mut(&input.from).unwrap() -= input.amount;
                *expected.get_mut(&input.to).unwrap() += input.amount;
            }
            TransferOutcome::Refused { .. } => refused += 1,
        }
    }
    eprintln!("{:>5.1} s: {moved} transfers moved money, {refused} were refused", started.elapsed().as_secs_f64());
    assert!(moved > 0, "some transfers moved money");
    let mut total = 0;
    for key in &accounts {
        let id = InstanceId::entity("Account", key.clone()).canonical();
        let account = reader.idle_account(&id).await;
        assert_eq!(account.balance, expected[key], "{id}: each transfer's effect applied exactly once");
        total += account.balance;
    }
    assert_eq!(total, OPENING * ACCOUNTS as i64, "money is conserved");

    // Every approval's retry timers fired, and its counter was added to once.
    for (i, input) in approvals.iter().enumerate() {
        let id = InstanceId::orchestration("Approval", format!("a{i}")).canonical();
        let output =
            e2e::eventually(Duration::from_secs(120), &format!("{id} finishes"), || reader.finished(&id)).await;
        let output: String =
            output.unwrap_or_else(|e| panic!("{id} did not complete: {e}")).decode().expect("a string");
        assert_eq!(output, examples::approval_expected(input), "{id}");
        let counter = InstanceId::entity("Counter", input.counter.clone()).canonical();
        let value = reader.record(&counter).await.and_then(|r| r.entity()?.state.as_ref()?.decode::<Counter>().ok());
        assert_eq!(value.map(|c| c.value), Some(input.amount), "{counter} added to once");
    }

    // Typesense equals Redis: every account's and every transfer's document is its committed state.
    let transfer_ids: Vec<&str> = transfers.iter().map(|(id, _)| id.as_str()).collect();
    let catching_up = Instant::now();
    while let Err(difference) = typesense_equals_redis(&reader, &prefix, &accounts, &transfer_ids).await {
        assert!(catching_up.elapsed() < Duration::from_secs(120), "Typesense differs from Redis: {difference}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{:>5.1} s: every invariant holds, Typesense equals Redis", started.elapsed().as_secs_f64());
    projector.terminate();
    for p in &mut processors {
        p.terminate();
    }
}

/// Whether every account document in Typesense has its entity's owner, balance and version in
/// Redis, and every transfer document its orchestration's status and version (`Err` says what
/// differs: the projector may not have caught up yet).
async fn typesense_equals_redis(
    reader: &Reader,
    prefix: &str,
    accounts: &[String],
    transfers: &[&str],
) -> Result<(), String> {
    let documents = e2e::typesense_documents(&format!("{prefix}_entity_Account")).await;
    for key in accounts {
        let id = InstanceId::entity("Account", key.clone()).canonical();
        let record = reader.record(&id).await.ok_or(format!("{id} not readable in Redis"))?;
        let account: Option<Account> = record.entity().and_then(|e| e.state.as_ref()?.decode().ok());
        let doc = documents.get(&id);
        let equal = doc.zip(account.as_ref()).is_some_and(|(d, a)| {
            d["owner"] == a.owner.as_str() && d["balance"] == a.balance && d["version"] == record.version
        });
        if !equal {
            return Err(format!("{id}: Typesense {doc:?}, Redis {account:?} version {}", record.version));
        }
    }
    let documents = e2e::typesense_documents(&format!("{prefix}_orchestrations")).await;
    for id in transfers {
        let record = reader.record(id).await.ok_or(format!("{id} not readable in Redis"))?;
        let completed =
            matches!(record.orchestration().map(|o| &o.status), Some(OrchestrationStatus::Completed { .. }));
        let doc = documents.get(*id);
        let equal = doc.is_some_and(|d| d["status"] == "completed" && d["version"] == record.version);
        if !completed || !equal {
            return Err(format!("{id}: Typesense {doc:?}, Redis version {} (completed: {completed})", record.version));
        }
    }
    Ok(())
}
