//! The deployment secret the processors seal with ([`crate::trust`]): `DURABLE_SECRET`, or the
//! one the store keeps. A kept one is asked for again every [`REFRESH`]: should Redis lose it
//! (restarted without its data) and a processor started since keep a new one, every processor
//! seals with the new one from then on and still accepts the old ones the store lists, so that
//! nothing sealed in between is refused as an outside record (stuck replies, stuck locks).

use std::sync::RwLock;
use std::time::Duration;

use durable_schemas::contract::seal::Seal;
use rand::RngCore as _;
use tracing::warn;

use crate::metrics::METRICS;
use crate::store::{AnyStore, Secrets, Store};

/// How often a processor without `DURABLE_SECRET` asks the store for the deployment's secrets.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The seal in use, and where it came from.
#[derive(Debug)]
pub struct Keeper {
    /// The secrets when they are the store's (`None`: `DURABLE_SECRET`, never changes).
    kept: Option<RwLock<(Secrets, Seal)>>,
    /// `DURABLE_SECRET`'s seal.
    configured: Option<Seal>,
}

impl Keeper {
    /// The seal of `DURABLE_SECRET`.
    pub fn configured(seal: Seal) -> Self {
        Self { kept: None, configured: Some(seal) }
    }

    /// The seal of the secrets the store keeps (one made up and offered if it keeps none).
    pub async fn kept(store: &AnyStore) -> anyhow::Result<Self> {
        let mut fresh = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut fresh);
        let secrets = ask(store, hex::encode(fresh).into_bytes(), None).await?;
        let seal = seal_of(&secrets)?;
        Ok(Self { kept: Some(RwLock::new((secrets, seal))), configured: None })
    }

    /// The MAC header value of a record this processor produces.
    pub fn sign(&self, key: &[u8], value: &[u8]) -> String {
        match (&self.configured, &self.kept) {
            (Some(seal), _) => seal.sign(key, value),
            (None, Some(kept)) => kept.read().expect("seal lock").1.sign(key, value),
            (None, None) => unreachable!("a keeper has a seal"),
        }
    }

    /// Whether a record's MAC header seals it.
    pub fn verify(&self, key: &[u8], value: &[u8], header: Option<&[u8]>) -> bool {
        match (&self.configured, &self.kept) {
            (Some(seal), _) => seal.verify(key, value, header),
            (None, Some(kept)) => kept.read().expect("seal lock").1.verify(key, value, header),
            (None, None) => unreachable!("a keeper has a seal"),
        }
    }

    /// Ask the store again (a kept secret only); true if the seal changed.
    pub async fn refresh(&self, store: &AnyStore) -> anyhow::Result<bool> {
        let Some(kept) = &self.kept else { return Ok(false) };
        let mine = kept.read().expect("seal lock").0.current.clone();
        let secrets = ask(store, mine.clone(), Some(mine.clone())).await?;
        if secrets == kept.read().expect("seal lock").0 {
            return Ok(false);
        }
        let seal = seal_of(&secrets)?;
        if secrets.current != mine {
            METRICS.seal_changes.with_label_values(&[] as &[&str]).inc();
            warn!(
                accepted = secrets.accepted.len(),
                "the deployment secret kept in Redis changed (Redis lost it and another processor kept a new one): sealing with it from now on, still accepting the previous ones; set DURABLE_SECRET to avoid this"
            );
        }
        *kept.write().expect("seal lock") = (secrets, seal);
        Ok(true)
    }
}

async fn ask(store: &AnyStore, offer: Vec<u8>, sealed_with: Option<Vec<u8>>) -> anyhow::Result<Secrets> {
    store
        .deployment_secret(offer, sealed_with)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the deployment secret from the store: {e}"))
}

fn seal_of(secrets: &Secrets) -> anyhow::Result<Seal> {
    Seal::new(&secrets.accepted).map_err(|e| {
        anyhow::anyhow!(
            "the deployment secret kept in the store is not usable ({e}): delete the keys <prefix>:secret and <prefix>:secrets, or set DURABLE_SECRET"
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::MemoryStore;

    /// Redis loses the kept secret while a processor runs, and a processor started since keeps
    /// a new one: after a refresh each seals with the new one and accepts what the other sealed
    /// before (nothing sealed in between is refused).
    #[tokio::test]
    async fn processors_converge_on_one_secret_after_the_store_lost_it() {
        let store = Arc::new(MemoryStore::new());
        let a = Keeper::kept(&AnyStore::Memory(store.clone())).await.unwrap();
        let before = a.sign(b"k", b"sealed by a before the loss");
        store.forget_secrets();
        let b = Keeper::kept(&AnyStore::Memory(store.clone())).await.unwrap();
        assert!(!b.verify(b"k", b"sealed by a before the loss", Some(before.as_bytes())), "diverged");
        assert!(a.refresh(&AnyStore::Memory(store.clone())).await.unwrap(), "a adopts the new secret");
        assert!(b.refresh(&AnyStore::Memory(store.clone())).await.unwrap(), "b learns a's old one");
        assert!(b.verify(b"k", b"sealed by a before the loss", Some(before.as_bytes())));
        let after = a.sign(b"k", b"v");
        assert_eq!(after, b.sign(b"k", b"v"), "both seal with the same secret");
        assert!(!a.refresh(&AnyStore::Memory(store)).await.unwrap(), "nothing more changes");
    }
}
