//! argon2id hashing on a small dedicated pool with a bounded queue.
//!
//! Every hash or verification holds `auth.argon2_memory_kib` of memory (19 MiB by default) while it runs, so the
//! number that run at once is what bounds the server's memory under a sign-in flood. A fixed set of worker threads
//! (about one per core) takes jobs from a queue of fixed length; a request that finds the queue full is refused at
//! once with [`AuthError::Busy`] (503 with `Retry-After`) instead of piling up. Hashing never runs on an async worker.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use std::cell::RefCell;

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use super::AuthError;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    /// A valid hash of a random password, verified against when an account does not exist.
    decoy: Arc<str>,
    /// Sender side of the bounded job queue; the workers exit when the last clone is dropped.
    jobs: SyncSender<Job>,
}

impl PasswordHasher {
    /// Starts `workers` hashing threads behind a queue of `queue` waiting jobs.
    pub fn new(memory_kib: u32, iterations: u32, workers: usize, queue: usize) -> Result<Self, AuthError> {
        let params = Params::new(memory_kib, iterations, 1, None).map_err(hashing_error)?;
        let decoy = hash_with(&params, &super::tokens::random_token())?.into();
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || worker(&rx))
                .map_err(|e| AuthError::Hashing(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self { params, decoy, jobs })
    }

    /// Runs `f` on the pool, or refuses at once when the queue is full.
    async fn submit<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, AuthError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(AuthError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(AuthError::Hashing("hashing pool stopped".into())),
        }
        rx.await.map_err(|_| AuthError::Hashing("hashing job was dropped".into()))
    }

    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let params = self.params.clone();
        self.submit(move || hash_with(&params, &password)).await?
    }

    /// Verifies `password` against `hash`, or against a decoy when `hash` is `None` (and then returns false). Both
    /// cases cost one full verification, so the answer's timing does not tell whether the account exists.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, AuthError> {
        let decoy = self.decoy.clone();
        self.submit(move || {
            let real = hash.is_some();
            let stored = hash.as_deref().unwrap_or(&decoy);
            Ok(matches(stored, &password)? && real)
        })
        .await?
    }
}

fn worker(jobs: &Mutex<Receiver<Job>>) {
    loop {
        // Hold the lock only to take a job, never while running one.
        let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // A panicking job must not take the worker with it; its caller sees the dropped reply.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

thread_local! {
    /// Each hashing thread keeps its argon2 memory and reuses it, so memory is taken once per thread rather than
    /// once per hash (the allocator would otherwise keep a growing pile of freed 19 MiB areas).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs argon2 into `out` with this thread's memory area.
fn compute(argon2: &Argon2<'_>, params: &Params, password: &[u8], salt: &[u8], out: &mut [u8]) -> argon2::Result<()> {
    MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        let blocks = params.block_count();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
    })
}

fn hashing_error(e: impl std::fmt::Display) -> AuthError {
    AuthError::Hashing(e.to_string())
}

/// A PHC string (`$argon2id$v=19$m=...,t=...,p=1$salt$hash`) for `password` with a fresh salt.
fn hash_with(params: &Params, password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes).map_err(hashing_error)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let length = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(length, |out| {
        compute(&argon2, params, password.as_bytes(), salt_bytes, out).map_err(Into::into)
    })
    .map_err(hashing_error)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(hashing_error)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `stored`, with the parameters recorded in it (so changing the config
/// does not lock users out). The comparison is constant-time.
fn matches(stored: &str, password: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(stored).map_err(hashing_error)?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(hashing_error)?;
    let version = parsed.version.map(Version::try_from).transpose().map_err(hashing_error)?.unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(hashing_error)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(AuthError::Hashing("stored hash lacks its salt or output".into()));
    };
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(hashing_error)?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    compute(&argon2, &params, password.as_bytes(), salt_bytes, &mut out).map_err(hashing_error)?;
    Ok(Output::new(&out).map_err(hashing_error)? == expected)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_are_salted() {
        let h = PasswordHasher::new(1024, 1, 1, 4).unwrap();
        let a = h.hash("s3cret-pass".into()).await.unwrap();
        let b = h.hash("s3cret-pass".into()).await.unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(h.verify("s3cret-pass".into(), Some(a.clone())).await.unwrap());
        assert!(!h.verify("wrong-pass1".into(), Some(a)).await.unwrap());
        assert!(!h.verify("s3cret-pass".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_are_standard_phc_strings_both_ways() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let h = PasswordHasher::new(1024, 1, 1, 4).unwrap();
        // A hash made by the argon2 crate's own API (as stored before) verifies, and ours verifies with it.
        let params = Params::new(2048, 2, 1, None).unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password(b"old-pass-1", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(h.verify("old-pass-1".into(), Some(theirs.clone())).await.unwrap());
        assert!(!h.verify("old-pass-2".into(), Some(theirs)).await.unwrap());
        let ours = h.hash("new-pass-1".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"new-pass-1", &parsed).is_ok());
        assert!(ours.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once_instead_of_piling_up() {
        // One worker, one queue slot: of many simultaneous hashes, at most two are taken; the rest are refused.
        let h = PasswordHasher::new(16 * 1024, 2, 1, 1).unwrap();
        let started = Instant::now();
        let attempts: Vec<_> = (0..16)
            .map(|_| {
                tokio::spawn({
                    let h = h.clone();
                    async move { h.hash("pw-123456".into()).await }
                })
            })
            .collect();
        let mut busy = 0;
        let mut done = 0;
        for a in attempts {
            match a.await.unwrap() {
                Ok(_) => done += 1,
                Err(AuthError::Busy) => busy += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!((1..=2).contains(&done), "{done} hashed");
        assert_eq!(busy + done, 16);
        assert!(started.elapsed() < Duration::from_secs(10));
        // Once the queue drains, hashing is accepted again.
        assert!(h.hash("pw-123456".into()).await.is_ok());
    }

    #[tokio::test]
    async fn an_unknown_account_costs_a_full_verification() {
        // With deliberately slow parameters, the decoy path must take about as long as a real wrong password.
        let h = PasswordHasher::new(16 * 1024, 3, 1, 4).unwrap();
        let real = h.hash("right-pass-1".into()).await.unwrap();
        let time = |hash: Option<String>| {
            let h = h.clone();
            async move {
                let t = Instant::now();
                assert!(!h.verify("wrong-pass-1".into(), hash).await.unwrap());
                t.elapsed()
            }
        };
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            known.push(time(Some(real.clone())).await);
            unknown.push(time(None).await);
        }
        known.sort();
        unknown.sort();
        let (k, u) = (known[2].as_secs_f64(), unknown[2].as_secs_f64());
        assert!(u > k * 0.5 && u < k * 2.0, "median wrong password {k:.4}s vs unknown email {u:.4}s");
    }
}
