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

/// A copy of directory `from` at `to` (files only, one level of subdirectories).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The partitions the processors report lost in `/status`.
async fn reported_lost(processors: &[Process]) -> std::collections::BTreeSet<u64> {
    let mut lost = std::collections::BTreeSet::new();
    for p in processors {
        let status = e2e::json_body(&e2e::http_get(p.metrics, "/status").await);
        lost.extend(status["lost_partitions"].as_array().into_iter().flatten().filter_map(|v| v.as_u64()));
    }
    lost
}

/// Redis restored from a copy of its data taken seconds earlier, under three running
/// processors: every partition that committed since the copy is detected (its owner's next
/// commit is refused, nothing is written on the stale state), reported, and stopped until an
/// operator accepts the loss; then the processors go on and new work finishes with every
/// invariant. What the loss broke in the old work is reported, never silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_rolled_back_under_running_processors_is_detected_and_accepted() {
    let mut redis = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let prefix = e2e::unique_prefix("chaos-rollback");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let processors: Vec<Process> = (0..3)
        .map(|slot| {
            let log = dir.join(format!("p{slot}.log"));
            Process::spawn_with(BINARY, &prefix, PARTITIONS as i32, &log, &[("DURABLE_REDIS_URL", url.as_str())])
        })
        .collect();
    every_one_owns_partitions(&processors).await;
    let reader = Reader { store: RedisStore::connect(&url, &prefix).await.expect("the chaos Redis") };
    let mut client = Client::new(&prefix);
    let transfer = |client: &mut Client, keys: &[String], n: usize, name: &str| {
        (0..n)
            .map(|i| {
                let input = TransferInput {
                    from: keys[i % keys.len()].clone(),
                    to: keys[(i * 3 + 1) % keys.len()].clone(),
                    amount: 5,
                };
                client.start("Transfer", &format!("{name}{i}"), input)
            })
            .collect::<Vec<_>>()
    };
    let old: Vec<String> = (0..ACCOUNTS).map(|i| format!("old{i}")).collect();
    let setup = open_accounts(&mut client, &old);
    client.send(&setup).await;
    let first = transfer(&mut client, &old, 40, "before");
    client.send(&first).await;
    for t in &first {
        e2e::eventually(Duration::from_secs(60), "the first transfers finish", || reader.finished(&t.target))
            .await
            .expect("completed");
    }
    let copy = dir.join("redis-copy");
    copy_dir(redis.dir(), &copy);
    let second = transfer(&mut client, &old, 40, "after-the-copy");
    client.send(&second).await;
    for t in &second {
        e2e::eventually(Duration::from_secs(60), "the later transfers finish", || reader.finished(&t.target))
            .await
            .expect("completed");
    }

    // Restore Redis from the copy: the forty later transfers are gone from it, not from Kafka.
    redis.kill();
    std::fs::remove_dir_all(redis.dir().join("appendonlydir")).unwrap();
    copy_dir(&copy.join("appendonlydir"), &redis.dir().join("appendonlydir"));
    redis.restart();
    // Traffic on every partition, so each owner commits (or finds its state lost).
    let probes: Vec<InstanceId> = (0..PARTITIONS)
        .map(|p| {
            (0..)
                .map(|i| InstanceId::entity("Counter", format!("probe{i}")))
                .find(|c| c.partition(PARTITIONS) == p)
                .unwrap()
        })
        .collect();
    let signals: Vec<_> = probes.iter().map(|c| client.signal(c, "add", 1)).collect();
    client.send(&signals).await;
    let lost =
        e2e::eventually(Duration::from_secs(60), "every partition applied its probe or is reported lost", || async {
            let lost = reported_lost(&processors).await;
            for (p, probe) in probes.iter().enumerate() {
                let applied = reader.record(&probe.canonical()).await.is_some();
                if !applied && !lost.contains(&(p as u64)) {
                    return None;
                }
            }
            Some(lost)
        })
        .await;
    eprintln!("partitions reported lost after the rollback: {lost:?}");
    assert!(!lost.is_empty(), "the rollback is detected");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in &lost {
        let probe = probes[*p as usize].canonical();
        assert!(reader.record(&probe).await.is_none(), "{probe}: nothing is applied on a lost partition's stale state");
    }
    let mut logs = String::new();
    for slot in 0..3 {
        logs.push_str(&std::fs::read_to_string(dir.join(format!("p{slot}.log"))).unwrap());
    }
    assert!(logs.contains("Redis lost state of this partition"), "the owners say what happened");
    for p in &lost {
        let accepted =
            e2e::http_post(processors[0].metrics, &format!("/v1/partitions/{p}/accept-loss"), &serde_json::json!({}))
                .await;
        assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    }
    e2e::eventually(Duration::from_secs(60), "every probe applied after the acceptance", || async {
        for probe in &probes {
            reader.record(&probe.canonical()).await?;
        }
        reported_lost(&processors).await.is_empty().then_some(())
    })
    .await;

    // New work after the acceptance finishes with every invariant.
    let fresh: Vec<String> = (0..ACCOUNTS).map(|i| format!("new{i}")).collect();
    let setup = open_accounts(&mut client, &fresh);
    client.send(&setup).await;
    let third = transfer(&mut client, &fresh, 40, "after-the-acceptance");
    client.send(&third).await;
    for t in &third {
        let outcome =
            e2e::eventually(Duration::from_secs(120), "the new transfers finish", || reader.finished(&t.target)).await;
        assert!(matches!(outcome.expect("completed").decode::<TransferOutcome>(), Ok(TransferOutcome::Transferred)));
    }
    let mut total = 0;
    for key in &fresh {
        let id = InstanceId::entity("Account", key.clone()).canonical();
        let account = reader.idle_account(&id).await;
        total += account.balance;
    }
    assert_eq!(total, OPENING * ACCOUNTS as i64, "money is conserved among the new accounts");

    // What the loss did to the old work: reported.
    let mut old_total = 0;
    for key in &old {
        let id = InstanceId::entity("Account", key.clone()).canonical();
        old_total += reader
            .record(&id)
            .await
            .and_then(|r| r.entity()?.state.as_ref()?.decode::<Account>().ok())
            .map_or(0, |a| a.balance);
    }
    let mut unfinished = 0;
    for t in &second {
        if reader.finished(&t.target).await.is_none() {
            unfinished += 1;
        }
    }
    eprintln!(
        "after the accepted loss: the old accounts hold {old_total} of {} (transfers lost with the rollback), {unfinished} of the {} later transfers are not finished in the restored state",
        OPENING * ACCOUNTS as i64,
        second.len()
    );
    for mut p in processors {
        p.terminate();
    }
}
