//! Password hashing with argon2id at OWASP's minimum parameters (m = 19 MiB, t = 2, p = 1).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use std::time::Duration;

use axum::http::StatusCode;

use crate::platform::error::{ApiError, ApiResult, ErrorCode};

pub const MIN_LEN: usize = 12;
pub const MAX_LEN: usize = 256;

fn hasher() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).expect("valid params"),
    )
}

/// Hashes a password (PHC string with salt and parameters).
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing")
        .to_string()
}

/// Verifies a password against a stored PHC string.
pub fn verify(stored: &str, password: &str) -> bool {
    PasswordHash::new(stored)
        .is_ok_and(|h| hasher().verify_password(password.as_bytes(), &h).is_ok())
}

/// Burns the same time as a real check, so unknown usernames cannot be told apart by timing.
pub fn verify_dummy(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash("dummy-password-for-timing"));
    let _ = verify(stored, password);
}

/// Checks `password` against `stored` (or, for an unknown account, burns the same time) on the
/// blocking pool, at most as many at once as the machine has cores: a flood of sign-ins queues
/// here instead of starving the async workers that answer everyone else. A check that cannot
/// start within `wait` answers 503 with Retry-After instead of queueing without end.
pub async fn check(stored: Option<String>, password: String, wait: Duration) -> ApiResult<bool> {
    off_thread(wait, move || match stored {
        Some(stored) => verify(&stored, &password),
        None => {
            verify_dummy(&password);
            false
        }
    })
    .await
}

/// A new password, checked for length and hashed: made before a transaction opens (on the
/// blocking pool behind the same cap as [`check`]), so no write lock or pool connection is held
/// while argon2 runs.
#[derive(Clone, Debug)]
pub struct NewHash(String);

impl NewHash {
    pub async fn of(password: &str, wait: Duration) -> ApiResult<NewHash> {
        validate_new(password)?;
        let password = password.to_string();
        off_thread(wait, move || NewHash(hash(&password))).await
    }

    /// The PHC string to store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Runs slow hashing work (argon2) on the hashing threads behind the cap on concurrent checks;
/// 503 with Retry-After when no slot frees within `wait`.
pub(crate) async fn off_thread<T: Send + 'static>(
    wait: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let slots = SLOTS.get_or_init(|| tokio::sync::Semaphore::new(hashing_threads()));
    let _permit = match tokio::time::timeout(wait, slots.acquire()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return Err(ApiError::internal()),
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "too many sign-ins are being checked; retry shortly",
            )
            .with_retry_after(1));
        }
    };
    let (done, answer) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        // A panic in the hash (it has none on any input) loses this one answer, not the thread.
        if let Ok(v) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            let _ = done.send(v);
        }
    });
    hashers()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| ApiError::internal())?;
    answer.await.map_err(|_| ApiError::internal())
}

type Job = Box<dyn FnOnce() + Send>;

/// Half as many hashing threads as the machine has cores (at least one): argon2's 19 MiB per
/// check runs through the caches and memory bus the request threads share, whatever its
/// priority, so a flood of checks is kept off half the cores.
fn hashing_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

// The hashing threads run at Linux's `SCHED_IDLE` policy: they get the CPU the threads that
// answer requests leave idle, and a request thread that wakes preempts them at once. Before,
// a flood of bad sign-ins (each check 20-30 ms of argon2) took both cores of a 2-core server
// at equal priority and raised every other request's p99 several times over; at nice 10 it
// still raised it 9.5× (p99 41 → 392 ms at 156 req/s beside 64 bad sign-ins, `loadtest api`,
// docs/performance.md): this kernel's EEVDF scheduler lets a niced thread finish its time
// slice before a woken request thread runs, and a request wakes threads several times over.
// `SCHED_IDLE` alone could starve sign-ins while something else (a backup, a test suite) keeps
// every core busy: a check still running after `PROMOTE_AFTER` is raised to the normal policy
// by a watchdog until it ends, so no check waits for CPU much longer than that.

/// How long a check may run at `SCHED_IDLE` before the watchdog raises it.
const PROMOTE_AFTER: Duration = Duration::from_millis(100);

/// What the watchdog knows of one hashing thread.
struct Worker {
    /// The thread's kernel id (0 until it has started).
    tid: std::sync::atomic::AtomicI32,
    /// When its current job started, ms since `epoch()` plus one; 0 when idle.
    started: std::sync::atomic::AtomicU64,
    /// Jobs it has started.
    jobs: std::sync::atomic::AtomicU64,
}

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn now_tick() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// The queue the hashing threads take their work from (started on first use).
fn hashers() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<Job>> {
    use std::sync::atomic::Ordering;
    static QUEUE: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let workers: std::sync::Arc<Vec<Worker>> = std::sync::Arc::new(
            (0..hashing_threads())
                .map(|_| Worker {
                    tid: 0.into(),
                    started: 0.into(),
                    jobs: 0.into(),
                })
                .collect(),
        );
        for i in 0..workers.len() {
            let (rx, workers) = (rx.clone(), workers.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || {
                    let me = &workers[i];
                    me.tid.store(thread_id(), Ordering::SeqCst);
                    set_policy(0, Policy::Idle);
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = job else { return };
                        me.jobs.fetch_add(1, Ordering::SeqCst);
                        me.started.store(now_tick(), Ordering::SeqCst);
                        job();
                        me.started.store(0, Ordering::SeqCst);
                        // Raised by the watchdog during the job: back down before the next.
                        if raised() {
                            set_policy(0, Policy::Idle);
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-check thread");
            }
        }
        let watchdog = std::thread::Builder::new()
            .name("password-check-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(PROMOTE_AFTER / 4);
                    for w in workers.iter() {
                        let jobs = w.jobs.load(Ordering::SeqCst);
                        let started = w.started.load(Ordering::SeqCst);
                        let late = started != 0
                            && now_tick().saturating_sub(started)
                                >= PROMOTE_AFTER.as_millis() as u64;
                        if !late {
                            continue;
                        }
                        let tid = w.tid.load(Ordering::SeqCst);
                        set_policy(tid, Policy::Normal);
                        // The job ended meanwhile (and its thread may have checked before it
                        // was raised): lower it again; a new job starts at SCHED_IDLE.
                        if w.started.load(Ordering::SeqCst) != started
                            || w.jobs.load(Ordering::SeqCst) != jobs
                        {
                            set_policy(tid, Policy::Idle);
                        }
                    }
                }
            });
        if let Err(e) = watchdog {
            tracing::error!(error = %e, "could not start the password-check watchdog");
        }
        std::sync::Mutex::new(tx)
    })
}

/// The calling thread's kernel id (Linux), 0 elsewhere.
fn thread_id() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no arguments and cannot fail.
        unsafe { libc::gettid() }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[derive(Clone, Copy)]
enum Policy {
    /// `SCHED_IDLE`: only CPU nothing else wants.
    Idle,
    /// `SCHED_OTHER` at nice 0.
    Normal,
}

/// Sets thread `tid`'s scheduling policy (0: the calling thread; Linux: the policy is per
/// thread). Elsewhere, or if refused, the thread keeps the normal policy.
fn set_policy(tid: i32, policy: Policy) {
    #[cfg(target_os = "linux")]
    if tid >= 0 {
        let param = libc::sched_param { sched_priority: 0 };
        let p = match policy {
            Policy::Idle => libc::SCHED_IDLE,
            Policy::Normal => libc::SCHED_OTHER,
        };
        // SAFETY: sched_setscheduler on the calling thread (0) or one of this process's own
        // hashing threads (a kernel thread id it recorded); `param` outlives the call. Both
        // moves, to SCHED_IDLE and back to SCHED_OTHER at nice 0, are open to an unprivileged
        // process on its own threads.
        let rc = unsafe { libc::sched_setscheduler(tid, p, &param) };
        if rc != 0 {
            tracing::warn!("could not change a password-check thread's scheduling policy");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (tid, policy);
}

/// Whether the calling thread runs above `SCHED_IDLE`.
fn raised() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getscheduler with pid 0 reads the calling thread's policy.
        unsafe { libc::sched_getscheduler(0) != libc::SCHED_IDLE }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The calling thread's scheduling policy (Linux), for the tests of the hashing threads'.
#[cfg(all(test, target_os = "linux"))]
fn current_policy() -> i32 {
    // SAFETY: sched_getscheduler with pid 0 reads the calling thread's policy.
    unsafe { libc::sched_getscheduler(0) }
}

/// Checks a new password's length (NIST 800-63B: length over composition rules).
pub fn validate_new(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return Err(ApiError::unprocessable(
            ErrorCode::WeakPassword,
            format!("passwords must be {MIN_LEN} to {MAX_LEN} characters long"),
        ));
    }
    Ok(())
}

/// A random password for new accounts (printed once, to be changed).
pub fn generate(random: impl Fn(&mut [u8])) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    random(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn password_checks_run_below_normal_priority() {
        let base = current_policy();
        let (policy, name) = off_thread(Duration::from_secs(5), || {
            (
                current_policy(),
                std::thread::current().name().map(String::from),
            )
        })
        .await
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert!(name.unwrap_or_default().starts_with("password-check-"));
        // Every request thread keeps its own policy.
        assert_eq!(current_policy(), base);
        assert_ne!(base, libc::SCHED_IDLE);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_check_that_runs_long_is_raised_to_the_normal_policy_until_it_ends() {
        let wait = Duration::from_secs(10);
        let (before, after) = off_thread(wait, || {
            let before = current_policy();
            // Stands in for a check starved of CPU: still running after PROMOTE_AFTER.
            std::thread::sleep(PROMOTE_AFTER * 4);
            (before, current_policy())
        })
        .await
        .unwrap();
        assert_eq!(before, libc::SCHED_IDLE);
        assert_eq!(
            after,
            libc::SCHED_OTHER,
            "the watchdog raised the slow check"
        );
        // The next job is back at SCHED_IDLE (with one thread per two cores, whichever thread
        // takes it: every one of them lowers itself after a raised job).
        for _ in 0..hashing_threads() {
            let next = off_thread(wait, current_policy).await.unwrap();
            assert_eq!(next, libc::SCHED_IDLE);
        }
    }

    #[test]
    fn hashes_are_argon2id_at_owasp_minimum() {
        let h = hash("correct horse battery");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(&h, "correct horse battery"));
        assert!(!verify(&h, "correct horse batterY"));
        assert!(!verify("not a hash", "x"));
    }

    #[test]
    fn short_passwords_are_refused() {
        assert!(validate_new("short").is_err());
        assert!(validate_new("long enough pass").is_ok());
    }
}
