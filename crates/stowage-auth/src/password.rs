//! Passwords and secrets: argon2id hashes for accounts, robot secrets, the htpasswd file
//! (as Distribution reads it), and a cache of recently verified credentials so basic auth
//! does not run argon2 or bcrypt on every request.
//!
//! No function here logs, returns or formats a password, a secret or a stored hash.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest accepted new password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Largest argon2 memory cost (KiB) a stored hash may ask for before it is refused
/// unverified: a damaged or hostile record must not make a login allocate gigabytes.
const MAX_ARGON2_M_COST: u32 = 256 * 1024;
/// Largest argon2 time cost a stored hash may ask for.
const MAX_ARGON2_T_COST: u32 = 16;
/// Largest argon2 parallelism a stored hash may ask for.
const MAX_ARGON2_P_COST: u32 = 16;

/// A password, secret or htpasswd operation failed. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// A new password is shorter than [`MIN_PASSWORD_CHARS`].
    #[error("password must have at least {min} characters")]
    TooShort {
        /// The minimum.
        min: usize,
    },
    /// A password is longer than [`MAX_PASSWORD_BYTES`].
    #[error("password must have at most {max} bytes")]
    TooLong {
        /// The maximum.
        max: usize,
    },
    /// A new password contains a control character.
    #[error("password must not contain control characters")]
    ControlCharacter,
    /// argon2id hashing failed.
    #[error("argon2id hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    /// The OS random number generator failed.
    #[error("cannot draw random bytes from the OS")]
    Random,
    /// The htpasswd file could not be read.
    #[error("cannot read htpasswd file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the htpasswd file is not `user:hash`.
    #[error("htpasswd file {path}, line {line}: {reason}")]
    HtpasswdSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the line's content).
        reason: &'static str,
    },
}

/// Hashes a password with argon2id (crate defaults: m = 19 MiB, t = 2, p = 1) and a random
/// 16-byte salt, as a PHC string. Check new passwords with [`check_new_password`] first.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong {
            max: MAX_PASSWORD_BYTES,
        });
    }
    let mut salt = [0u8; 16];
    os_random(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(PasswordError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(PasswordError::Hash)
}

/// Costs what checking a password of an existing user costs, and fails: run for names
/// that match no account, so the time of a refusal does not tell which names exist.
pub fn verify_unknown_user(candidate: &str) -> bool {
    static DECOY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let decoy = DECOY.get_or_init(|| hash_password("stowage decoy password").ok());
    if let Some(phc) = decoy {
        // The result is thrown away: the decoy's password is not a credential.
        let _ = verify_password(phc, candidate);
    }
    false
}

/// Whether `candidate` matches the argon2id PHC string `phc`. False on a malformed hash,
/// another algorithm, or parameters beyond sane bounds; never panics.
pub fn verify_password(phc: &str, candidate: &str) -> bool {
    if candidate.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return false;
    }
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_ARGON2_M_COST
        || params.t_cost() > MAX_ARGON2_T_COST
        || params.p_cost() > MAX_ARGON2_P_COST
    {
        return false;
    }
    Argon2::default()
        .verify_password(candidate.as_bytes(), &parsed)
        .is_ok()
}

/// Whether `phc` is an argon2id hash in PHC form with parameters this module will verify
/// (what an account record may hold; the admin service refuses anything else).
pub fn is_argon2id_hash(phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != argon2::ARGON2ID_IDENT || parsed.hash.is_none() {
        return false;
    }
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    params.m_cost() <= MAX_ARGON2_M_COST
        && params.t_cost() <= MAX_ARGON2_T_COST
        && params.p_cost() <= MAX_ARGON2_P_COST
}

/// Checks a new password: at least [`MIN_PASSWORD_CHARS`] characters, at most
/// [`MAX_PASSWORD_BYTES`] bytes, no control characters.
pub fn check_new_password(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong {
            max: MAX_PASSWORD_BYTES,
        });
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort {
            min: MIN_PASSWORD_CHARS,
        });
    }
    if password.chars().any(char::is_control) {
        return Err(PasswordError::ControlCharacter);
    }
    Ok(())
}

/// A new robot secret: 32 bytes from the OS random number generator, base64url without
/// padding (43 characters). Store only [`secret_sha256`] of it.
pub fn generate_secret() -> Result<String, PasswordError> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    os_random(bytes.as_mut())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

/// The hex SHA-256 of a robot secret, the form in which it is stored. (A fast hash is
/// enough: the secret has 256 bits of entropy.)
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `candidate` hashes to `stored_hex` (from [`secret_sha256`]), compared in
/// constant time. False on a malformed stored value.
pub fn verify_secret(stored_hex: &str, candidate: &str) -> bool {
    let Ok(stored) = hex::decode(stored_hex) else {
        return false;
    };
    if stored.len() != 32 {
        return false;
    }
    let actual = Sha256::digest(candidate.as_bytes());
    stored.as_slice().ct_eq(actual.as_slice()).into()
}

fn os_random(buf: &mut [u8]) -> Result<(), PasswordError> {
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .map_err(|_| PasswordError::Random)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What identifies a version of the htpasswd file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    ino: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            ino: meta.ino(),
        }
    }
}

struct HtpasswdState {
    users: HashMap<String, String>,
    /// A hash to verify against when the user is unknown, so that "no such user" takes as
    /// long as "wrong password".
    decoy: Option<String>,
    stamp: FileStamp,
}

/// An htpasswd file of `user:bcrypt-hash` lines, read the way Distribution reads it: lines
/// are trimmed, blank lines and lines starting with `#` are skipped, the user ends at the
/// first `:`. Only bcrypt (`$2a$`, `$2b$`, `$2y$`) is accepted; other schemes are skipped
/// with a warning naming the line number. Shared as `Arc<Htpasswd>`; [`reload_if_changed`]
/// swaps the contents in place.
///
/// [`reload_if_changed`]: Htpasswd::reload_if_changed
pub struct Htpasswd {
    path: PathBuf,
    state: RwLock<HtpasswdState>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .users
            .len();
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .field("users", &users)
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Loads the file; a missing or unreadable file, or a line without `:`, is an error.
    pub fn load(path: &Path) -> Result<Htpasswd, PasswordError> {
        let state = read_htpasswd(path)?;
        Ok(Htpasswd {
            path: path.to_owned(),
            state: RwLock::new(state),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks `password` for `user` with bcrypt: `None` if there is no such user.
    /// An unknown user still costs one bcrypt run, against another entry's hash.
    pub fn verify(&self, user: &str, password: &str) -> Option<bool> {
        let (hash, known) = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            match state.users.get(user) {
                Some(h) => (Some(h.clone()), true),
                None => (state.decoy.clone(), false),
            }
        };
        let ok = hash.is_some_and(|h| bcrypt::verify(password, &h).unwrap_or(false));
        known.then_some(ok)
    }

    /// A number that changes whenever `user`'s entry changes (the first 8 bytes of the
    /// SHA-256 of its hash): refresh tokens carry it, so a changed or removed password ends
    /// them. `None` if there is no such user.
    pub fn fingerprint(&self, user: &str) -> Option<u64> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let hash = state.users.get(user)?;
        let digest = Sha256::digest(hash.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Some(u64::from_be_bytes(first))
    }

    /// Whether `user` has an entry.
    pub fn contains(&self, user: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .users
            .contains_key(user)
    }

    /// The user names, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .users
            .keys()
            .cloned()
            .collect();
        users.sort_unstable();
        users
    }

    /// Re-reads the file if its modification time, length (or inode) changed. Returns
    /// whether it was reloaded. On error the previous contents stay in force.
    pub fn reload_if_changed(&self) -> Result<bool, PasswordError> {
        let meta = std::fs::metadata(&self.path).map_err(|source| PasswordError::Read {
            path: self.path.clone(),
            source,
        })?;
        let current = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .stamp;
        if FileStamp::of(&meta) == current {
            return Ok(false);
        }
        let fresh = read_htpasswd(&self.path)?;
        let users = fresh.users.len();
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        tracing::info!(path = %self.path.display(), users, "reloaded htpasswd file");
        Ok(true)
    }
}

fn read_htpasswd(path: &Path) -> Result<HtpasswdState, PasswordError> {
    let read_err = |source| PasswordError::Read {
        path: path.to_owned(),
        source,
    };
    // Stamp before reading: a change during the read is then seen by the next reload.
    let stamp = FileStamp::of(&std::fs::metadata(path).map_err(read_err)?);
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let mut users = HashMap::new();
    let mut decoy = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let syntax = |reason| PasswordError::HtpasswdSyntax {
            path: path.to_owned(),
            line,
            reason,
        };
        let (user, hash) = entry.split_once(':').ok_or_else(|| syntax("missing ':'"))?;
        if user.is_empty() {
            return Err(syntax("empty user name"));
        }
        if !is_bcrypt(hash) {
            tracing::warn!(
                path = %path.display(),
                line,
                "htpasswd entry skipped: only bcrypt hashes ($2a$, $2b$, $2y$) are supported"
            );
            continue;
        }
        if decoy.is_none() {
            decoy = Some(hash.to_owned());
        }
        if users.insert(user.to_owned(), hash.to_owned()).is_some() {
            tracing::warn!(path = %path.display(), line, "htpasswd user listed twice; the later line wins");
        }
    }
    Ok(HtpasswdState {
        users,
        decoy,
        stamp,
    })
}

/// `$2a$`/`$2b$`/`$2y$`, a two-digit cost in 4..=31, `$`, 53 characters of bcrypt base64.
fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && hash
            .get(4..6)
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (4..=31).contains(&c))
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

type CacheKey = [u8; 32];

struct CacheEntry {
    user: String,
    inserted: Instant,
}

struct CacheInner {
    entries: HashMap<CacheKey, CacheEntry>,
    /// Insertion order; records whose entry was replaced or removed are skipped lazily.
    order: VecDeque<(CacheKey, Instant)>,
}

/// Remembers recently verified `(user, secret, generation)` triples. Entries are keyed by
/// a SHA-256 over a random per-cache salt and the length-prefixed user, secret and
/// generation, so the secret itself is never stored. Bounded: when full, expired entries
/// go first, then the oldest. A new credential generation (password change, robot
/// rotation) misses the cache by construction; [`forget_user`](Self::forget_user) drops a
/// user's entries at once.
pub struct CredentialCache {
    capacity: usize,
    ttl: Duration,
    salt: [u8; 32],
    inner: Mutex<CacheInner>,
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl CredentialCache {
    /// A cache of at most `capacity` entries, each trusted for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> CredentialCache {
        use rand::RngCore as _;
        let mut salt = [0u8; 32];
        rand::rng().fill_bytes(&mut salt);
        CredentialCache {
            capacity,
            ttl,
            salt,
            inner: Mutex::new(CacheInner {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// Whether this triple was inserted less than `ttl` before `now`.
    pub fn check(&self, user: &str, secret: &str, generation: u64, now: Instant) -> bool {
        let key = self.key(user, secret, generation);
        let mut inner = lock(&self.inner);
        let fresh = match inner.entries.get(&key) {
            None => return false,
            Some(e) => now.saturating_duration_since(e.inserted) < self.ttl,
        };
        if !fresh {
            inner.entries.remove(&key);
        }
        fresh
    }

    /// Records a successful verification at `now`.
    pub fn insert(&self, user: &str, secret: &str, generation: u64, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let key = self.key(user, secret, generation);
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        if let Some(e) = inner.entries.get_mut(&key) {
            e.inserted = now;
        } else {
            // Expired entries are at the front (insertion order, one ttl for all).
            while let Some(&(k, t)) = inner.order.front() {
                let live = inner.entries.get(&k).is_some_and(|e| e.inserted == t);
                let expired = now.saturating_duration_since(t) >= self.ttl;
                if live && !expired && inner.entries.len() < self.capacity {
                    break;
                }
                inner.order.pop_front();
                if live {
                    inner.entries.remove(&k);
                }
            }
            inner.entries.insert(
                key,
                CacheEntry {
                    user: user.to_owned(),
                    inserted: now,
                },
            );
        }
        inner.order.push_back((key, now));
        if inner.order.len() > 2 * self.capacity + 16 {
            let mut live: Vec<(CacheKey, Instant)> = inner
                .entries
                .iter()
                .map(|(k, e)| (*k, e.inserted))
                .collect();
            live.sort_by_key(|(_, t)| *t);
            inner.order = live.into();
        }
    }

    /// Drops every entry of `user` (after a password change, a lock, a deletion).
    pub fn forget_user(&self, user: &str) {
        lock(&self.inner).entries.retain(|_, e| e.user != user);
    }

    /// Number of entries, expired ones included until they are evicted.
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self, user: &str, secret: &str, generation: u64) -> CacheKey {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update((user.len() as u64).to_le_bytes());
        h.update(user.as_bytes());
        h.update([0u8]);
        h.update((secret.len() as u64).to_le_bytes());
        h.update(secret.as_bytes());
        h.update([0u8]);
        h.update(generation.to_le_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;

    use super::*;

    #[test]
    fn only_sane_argon2id_hashes_are_accepted_as_records() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(is_argon2id_hash(&h));
        assert!(!is_argon2id_hash("plain"));
        assert!(!is_argon2id_hash(&h.replace("argon2id", "argon2i")));
        assert!(!is_argon2id_hash("$2y$05$abcdefghijklmnopqrstuv"));
        let greedy = h.replace("m=19456", "m=4194304");
        assert_ne!(greedy, h);
        assert!(!is_argon2id_hash(&greedy));
    }

    #[test]
    fn argon2id_round_trip() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "correct horsE"));
        // Salted: the same password hashes differently.
        assert_ne!(phc, hash_password("correct horse").unwrap());
    }

    #[test]
    fn unknown_users_fail_after_a_real_check() {
        // The decoy is a real argon2id hash, so the refusal costs what a known user's does;
        // its own password is no credential either.
        assert!(!verify_unknown_user("stowage decoy password"));
        assert!(!verify_unknown_user("anything"));
    }

    #[test]
    fn verify_password_is_false_on_garbage() {
        for bad in [
            "",
            "not a hash",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$",
            "$2b$04$abcdefghijklmnopqrstuu5Ue1M8Qb9Yk0Yb4bX0o2x8cMzqJdR1a",
        ] {
            assert!(!verify_password(bad, "x"), "{bad:?}");
        }
        // Another argon2 variant, or absurd parameters, are refused unverified.
        let phc = hash_password("pw").unwrap();
        assert!(!verify_password(
            &phc.replacen("argon2id", "argon2i", 1),
            "pw"
        ));
        let huge = phc.replacen("m=19456", "m=4194304", 1);
        assert!(!verify_password(&huge, "pw"));
    }

    #[test]
    fn new_password_rules() {
        assert!(check_new_password("12345678").is_ok());
        assert!(check_new_password("ünïcødé!").is_ok());
        assert!(matches!(
            check_new_password("1234567"),
            Err(PasswordError::TooShort { min: 8 })
        ));
        assert!(matches!(
            check_new_password(&"a".repeat(1025)),
            Err(PasswordError::TooLong { max: 1024 })
        ));
        assert!(check_new_password(&"a".repeat(1024)).is_ok());
        assert!(matches!(
            check_new_password("abc\ndefgh"),
            Err(PasswordError::ControlCharacter)
        ));
        let msg = check_new_password("hunter2").unwrap_err().to_string();
        assert!(!msg.contains("hunter2"));
    }

    #[test]
    fn robot_secrets() {
        let s = generate_secret().unwrap();
        assert_eq!(s.len(), 43);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(s, generate_secret().unwrap());
        let stored = secret_sha256(&s);
        assert_eq!(stored.len(), 64);
        assert!(verify_secret(&stored, &s));
        assert!(!verify_secret(&stored, "wrong"));
        assert!(!verify_secret("zz", &s));
        assert!(!verify_secret(&stored[..62], &s));
        // Known vector: SHA-256("abc").
        assert_eq!(
            secret_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f.sync_all().unwrap();
        path
    }

    #[test]
    fn htpasswd_reads_bcrypt_lines_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let alice = bcrypt::hash("alice-pw", 4).unwrap();
        let bob_2y = bcrypt::hash_with_result("bob-pw", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let carol_2a = bcrypt::hash_with_result("carol-pw", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoA);
        let content = format!(
            "# comment\n\n  alice:{alice}  \r\nbob:{bob_2y}\ncarol:{carol_2a}\n\
             dave:$apr1$abcdefgh$0123456789abcdefghijkl\neve:{{SHA}}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n"
        );
        let path = write_file(dir.path(), "htpasswd", &content);
        let h = Htpasswd::load(&path).unwrap();
        assert_eq!(h.users(), vec!["alice", "bob", "carol"]);
        assert_eq!(h.verify("alice", "alice-pw"), Some(true));
        assert_eq!(h.verify("alice", "wrong"), Some(false));
        assert_eq!(h.verify("bob", "bob-pw"), Some(true));
        assert_eq!(h.verify("carol", "carol-pw"), Some(true));
        assert_eq!(h.verify("dave", "anything"), None);
        assert_eq!(h.verify("nobody", "alice-pw"), None);
        assert!(h.contains("alice") && !h.contains("dave") && !h.contains("eve"));
        let debug = format!("{h:?}");
        assert!(!debug.contains("$2"), "{debug}");
    }

    #[test]
    fn htpasswd_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Htpasswd::load(&dir.path().join("missing")),
            Err(PasswordError::Read { .. })
        ));
        let path = write_file(dir.path(), "bad", "# ok\nuser-without-colon-secret\n");
        match Htpasswd::load(&path) {
            Err(e @ PasswordError::HtpasswdSyntax { line: 2, .. }) => {
                assert!(!e.to_string().contains("secret"), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let path = write_file(dir.path(), "empty-user", ":$2b$04$x\n");
        assert!(matches!(
            Htpasswd::load(&path),
            Err(PasswordError::HtpasswdSyntax { line: 1, .. })
        ));
    }

    #[test]
    fn htpasswd_reloads_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = bcrypt::hash("a-pw", 4).unwrap();
        let path = write_file(dir.path(), "htpasswd", &format!("a:{a}\n"));
        let h = std::sync::Arc::new(Htpasswd::load(&path).unwrap());
        assert!(!h.reload_if_changed().unwrap());
        let b = bcrypt::hash("b-pw", 4).unwrap();
        // Replace atomically (new inode, different length), as an operator's tool would.
        let tmp = write_file(dir.path(), "htpasswd.new", &format!("a:{a}\nb:{b}\n"));
        let a_before = h.fingerprint("a");
        assert!(a_before.is_some() && h.fingerprint("b").is_none());
        std::fs::rename(&tmp, &path).unwrap();
        assert!(h.reload_if_changed().unwrap());
        assert_eq!(h.verify("b", "b-pw"), Some(true));
        assert!(!h.reload_if_changed().unwrap());
        // An unchanged entry keeps its fingerprint (its refresh tokens live on); a changed
        // password gets a new one.
        assert_eq!(h.fingerprint("a"), a_before);
        let a2 = bcrypt::hash("a-pw-2", 4).unwrap();
        let tmp = write_file(dir.path(), "htpasswd.new", &format!("a:{a2}\nb:{b}\n"));
        std::fs::rename(&tmp, &path).unwrap();
        assert!(h.reload_if_changed().unwrap());
        assert!(h.fingerprint("a").is_some() && h.fingerprint("a") != a_before);
        // A broken file keeps the previous contents in force.
        let tmp = write_file(dir.path(), "htpasswd.bad", "no colon here\n");
        std::fs::rename(&tmp, &path).unwrap();
        assert!(h.reload_if_changed().is_err());
        assert_eq!(h.verify("b", "b-pw"), Some(true));
    }

    #[test]
    fn cache_hits_misses_and_expiry() {
        let ttl = Duration::from_secs(60);
        let cache = CredentialCache::new(10, ttl);
        let t0 = Instant::now();
        assert!(!cache.check("alice", "pw", 1, t0));
        cache.insert("alice", "pw", 1, t0);
        assert!(cache.check("alice", "pw", 1, t0 + Duration::from_secs(59)));
        assert!(!cache.check("alice", "other", 1, t0));
        assert!(!cache.check("bob", "pw", 1, t0));
        // A new generation (password changed) misses.
        assert!(!cache.check("alice", "pw", 2, t0));
        // Expired.
        assert!(!cache.check("alice", "pw", 1, t0 + ttl));
        assert!(cache.is_empty());
        // Length prefixes keep (user, secret) boundaries apart.
        cache.insert("a\0b", "c", 1, t0);
        assert!(!cache.check("a", "b\0c", 1, t0));
    }

    #[test]
    fn cache_forget_user() {
        let cache = CredentialCache::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        cache.insert("alice", "pw1", 1, t0);
        cache.insert("alice", "pw2", 1, t0);
        cache.insert("bob", "pw", 1, t0);
        cache.forget_user("alice");
        assert!(!cache.check("alice", "pw1", 1, t0));
        assert!(!cache.check("alice", "pw2", 1, t0));
        assert!(cache.check("bob", "pw", 1, t0));
    }

    #[test]
    fn cache_is_bounded_evicting_expired_then_oldest() {
        let ttl = Duration::from_secs(100);
        let cache = CredentialCache::new(3, ttl);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        cache.insert("u1", "s", 0, at(0));
        cache.insert("u2", "s", 0, at(10));
        cache.insert("u3", "s", 0, at(20));
        // Full: the oldest (u1) goes.
        cache.insert("u4", "s", 0, at(30));
        assert_eq!(cache.len(), 3);
        assert!(!cache.check("u1", "s", 0, at(30)));
        assert!(cache.check("u2", "s", 0, at(30)));
        // At t=125 u2 (10) and u3 (20) have expired: both go, u4 (30) stays.
        cache.insert("u5", "s", 0, at(125));
        assert_eq!(cache.len(), 2);
        assert!(cache.check("u4", "s", 0, at(125)));
        assert!(cache.check("u5", "s", 0, at(125)));
        // Re-inserting refreshes an entry without growing the cache.
        for i in 0..100 {
            cache.insert("u5", "s", 0, at(116 + i));
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.check("u5", "s", 0, at(300)));
        assert!(!cache.check("u4", "s", 0, at(300)));
        let debug = format!("{cache:?}");
        assert!(!debug.contains("u5"));
    }
}
