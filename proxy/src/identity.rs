//! Who a request is: bearer tokens (stored as SHA-256), basic auth (argon2id),
//! client certificates (SAN or CN). Every failure gets the same answer; the
//! reason goes only to the audit record.
//!
//! Tokens are 256-bit random, so a fast hash is enough and every stored hash is
//! compared in constant time. Passwords are argon2id; an unknown user is checked
//! against a decoy hash so it costs the same as a wrong password, verifications
//! run off the async threads, at most two at a time, and a success is cached for
//! five minutes under a keyed hash of the exact credentials (the key is random
//! per process), so a legitimate client pays for argon2 once.
//!
//! Fair under a flood: each source has at most one verification queued or
//! running, and at most [`ARGON_QUEUE`] wait for a worker, each for at most
//! [`ARGON_WAIT`]; beyond that the answer is [`AuthFailure::Busy`] (429 with
//! Retry-After) at once. A flood of wrong passwords from one address therefore
//! holds one worker, and a correct login from elsewhere waits for at most one
//! hash.

use super::config::{Identity, Token};
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use warden_runtime::sync::Locked;

const TOKEN_PREFIX: &str = "owt_";
const BASIC_CACHE_TTL: Duration = Duration::from_secs(300);
const BASIC_CACHE_MAX: usize = 10_000;
/// Password verifications that may wait for a worker at once.
pub const ARGON_QUEUE: usize = 32;
/// How long one may wait before the answer is "busy".
pub const ARGON_WAIT: Duration = Duration::from_secs(2);
const ARGON_WORKERS: usize = 2;

/// Why a request was not authenticated (for the audit record only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    UnknownToken,
    ExpiredToken,
    BadPassword,
    UnmappedCertificate,
    AmbiguousCertificate,
    Disagree,
    /// Password checking is saturated (this source has one pending, or the
    /// queue is full): try again later.
    Busy,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "no credentials",
            Self::Malformed => "malformed credentials",
            Self::UnknownToken => "unknown token",
            Self::ExpiredToken => "expired token",
            Self::BadPassword => "unknown user or wrong password",
            Self::UnmappedCertificate => "client certificate names no identity",
            Self::AmbiguousCertificate => "client certificate names several identities",
            Self::Disagree => "certificate and header name different identities",
            Self::Busy => "password checks busy (one per source at a time)",
        }
    }
}

pub struct Authenticator {
    identities: Vec<Arc<Identity>>,
    tokens: Vec<(Token, usize)>,
    by_name: HashMap<String, usize>,
    by_cert: HashMap<String, usize>,
    decoy: String,
    argon_slots: Arc<Semaphore>,
    /// Verifications queued or running, per source.
    argon_pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
    argon_waiting: Arc<AtomicUsize>,
    cache_key: [u8; 32],
    basic_ok: Mutex<HashMap<[u8; 32], (usize, Instant)>>,
}

impl Authenticator {
    pub fn new(identities: Vec<Arc<Identity>>) -> Self {
        let mut tokens = Vec::new();
        let mut by_name = HashMap::new();
        let mut by_cert = HashMap::new();
        for (i, id) in identities.iter().enumerate() {
            tokens.extend(id.tokens.iter().map(|t| (t.clone(), i)));
            by_name.insert(id.name.clone(), i);
            for c in &id.mtls {
                by_cert.insert(c.to_ascii_lowercase(), i);
            }
        }
        Self {
            identities,
            tokens,
            by_name,
            by_cert,
            decoy: hash_password(&random_token()),
            argon_slots: Arc::new(Semaphore::new(ARGON_WORKERS)),
            argon_pending: Arc::default(),
            argon_waiting: Arc::default(),
            cache_key: {
                let mut k = [0u8; 32];
                getrandom(&mut k);
                k
            },
            basic_ok: Mutex::new(HashMap::new()),
        }
    }

    /// The identity of a request: from its `Authorization` header and/or the
    /// names of its verified client certificate.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        cert_names: &[String],
        now_unix: i64,
        source: IpAddr,
    ) -> Result<Arc<Identity>, AuthFailure> {
        let from_cert = self.by_certificate(cert_names);
        let Some(header) = authorization else {
            return match from_cert {
                Some(r) => r.map(|i| self.identities[i].clone()),
                None => Err(AuthFailure::Missing),
            };
        };
        let i = self.by_header(header, now_unix, source).await?;
        match from_cert {
            Some(Ok(c)) if c != i => Err(AuthFailure::Disagree),
            Some(Err(AuthFailure::AmbiguousCertificate)) => Err(AuthFailure::AmbiguousCertificate),
            _ => Ok(self.identities[i].clone()),
        }
    }

    fn by_certificate(&self, names: &[String]) -> Option<Result<usize, AuthFailure>> {
        if names.is_empty() {
            return None;
        }
        let mut found: Option<usize> = None;
        for n in names {
            if let Some(&i) = self.by_cert.get(&n.to_ascii_lowercase()) {
                if found.is_some_and(|f| f != i) {
                    return Some(Err(AuthFailure::AmbiguousCertificate));
                }
                found = Some(i);
            }
        }
        Some(found.ok_or(AuthFailure::UnmappedCertificate))
    }

    async fn by_header(
        &self,
        header: &[u8],
        now_unix: i64,
        source: IpAddr,
    ) -> Result<usize, AuthFailure> {
        let text = std::str::from_utf8(header).map_err(|_| AuthFailure::Malformed)?;
        let (scheme, rest) = text.split_once(' ').ok_or(AuthFailure::Malformed)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            self.bearer(rest, now_unix)
        } else if scheme.eq_ignore_ascii_case("basic") {
            self.basic(rest, source).await
        } else {
            Err(AuthFailure::Malformed)
        }
    }

    fn bearer(&self, token: &str, now_unix: i64) -> Result<usize, AuthFailure> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every stored hash is compared; no early exit.
        let mut hit: Option<&(Token, usize)> = None;
        for entry in &self.tokens {
            if bool::from(entry.0.hash.ct_eq(&presented)) {
                hit = Some(entry);
            }
        }
        let (tok, i) = hit.ok_or(AuthFailure::UnknownToken)?;
        if tok.expires.is_some_and(|e| now_unix >= e) {
            return Err(AuthFailure::ExpiredToken);
        }
        Ok(*i)
    }

    async fn basic(&self, encoded: &str, source: IpAddr) -> Result<usize, AuthFailure> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| AuthFailure::Malformed)?;
        let text = String::from_utf8(raw).map_err(|_| AuthFailure::Malformed)?;
        let (user, password) = text.split_once(':').ok_or(AuthFailure::Malformed)?;
        let key: [u8; 32] = Sha256::new()
            .chain_update(self.cache_key)
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        if let Some(&(i, at)) = self.basic_ok.locked().get(&key)
            && at.elapsed() < BASIC_CACHE_TTL
        {
            return Ok(i);
        }
        let target = self.by_name.get(user).copied();
        let stored = target.and_then(|i| self.identities[i].basic.clone());
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.decoy.clone());
        let password = password.to_owned();
        let pending = PendingCheck::claim(&self.argon_pending, source)?;
        // The slot and the claim move into the blocking task: a client that
        // gives up frees neither while the hash still runs.
        let slot = {
            let _waiting = Waiting::enter(&self.argon_waiting)?;
            tokio::time::timeout(ARGON_WAIT, self.argon_slots.clone().acquire_owned())
                .await
                .map_err(|_| AuthFailure::Busy)?
                .expect("never closed")
        };
        let verified = tokio::task::spawn_blocking(move || {
            let _held = (slot, pending);
            PasswordHash::new(&phc).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        match (known && verified, target) {
            (true, Some(i)) => {
                let mut cache = self.basic_ok.locked();
                if cache.len() >= BASIC_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, (i, Instant::now()));
                Ok(i)
            }
            _ => Err(AuthFailure::BadPassword),
        }
    }
}

/// A source's one pending password check; released when dropped.
struct PendingCheck {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl PendingCheck {
    fn claim(
        map: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        source: IpAddr,
    ) -> Result<Self, AuthFailure> {
        let mut m = map.locked();
        let n = m.entry(source).or_default();
        if *n >= 1 {
            return Err(AuthFailure::Busy);
        }
        *n += 1;
        Ok(Self {
            map: map.clone(),
            source,
        })
    }
}

impl Drop for PendingCheck {
    fn drop(&mut self) {
        let mut m = self.map.locked();
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

/// A place in the bounded queue for an argon2 worker.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn enter(count: &Arc<AtomicUsize>) -> Result<Self, AuthFailure> {
        if count.fetch_add(1, Ordering::AcqRel) >= ARGON_QUEUE {
            count.fetch_sub(1, Ordering::AcqRel);
            return Err(AuthFailure::Busy);
        }
        Ok(Self(count.clone()))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A fresh bearer token: `owt_` and 43 base64url characters (256 random bits).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The config form of a token: `sha256:HEX`.
pub fn token_hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// An argon2id PHC string (default parameters: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom(&mut salt);
    let salt =
        argon2::password_hash::SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

fn getrandom(buf: &mut [u8]) {
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n, buf.len() as isize, "getrandom failed");
}

/// When a certificate stops being valid (unix seconds).
pub fn certificate_not_after(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A certificate's subject and when it stops being valid (unix seconds).
pub fn certificate_validity(der: &[u8]) -> Option<(String, i64)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((
        cert.subject().to_string(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Names a verified client certificate offers: SAN DNS names and e-mail
/// addresses, then the subject CN.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) => names.push((*s).to_owned()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(s.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_token_hash;

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn identity(
        name: &str,
        tokens: Vec<Token>,
        basic: Option<String>,
        mtls: &[&str],
    ) -> Arc<Identity> {
        Arc::new(Identity {
            name: name.into(),
            tokens,
            basic,
            mtls: mtls.iter().map(|s| s.to_string()).collect(),
            models: vec![],
            admin: false,
            sources: vec![],
            windows: vec![],
            rate: None,
            concurrency: None,
            max_body: 1,
            max_tokens: None,
            max_prompt_chars: None,
            pull_from: None,
        })
    }

    fn tok(t: &str, expires: Option<i64>) -> Token {
        Token {
            hash: parse_token_hash(&token_hash(t)).unwrap(),
            expires,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_pending_password_check_per_source() {
        let auth = Arc::new(Authenticator::new(vec![identity(
            "alice",
            Vec::new(),
            Some(hash_password("pw")),
            &[],
        )]));
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:wrong")
        )
        .into_bytes();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let check = |src: IpAddr| {
            let (auth, wrong) = (auth.clone(), wrong.clone());
            tokio::spawn(async move { auth.authenticate(Some(&wrong), &[], 0, src).await.err() })
        };
        // Two at once from one source: the second is told "busy" at once; a
        // second source is checked alongside.
        let (first, second, other) = (check(a), check(a), check(b));
        let second = second.await.unwrap();
        let (first, other) = (first.await.unwrap(), other.await.unwrap());
        let mut from_a = [first, second];
        from_a.sort_by_key(|f| f.map(|f| f as u8));
        assert!(
            from_a.contains(&Some(AuthFailure::Busy))
                && from_a.contains(&Some(AuthFailure::BadPassword)),
            "{from_a:?}"
        );
        assert_eq!(other, Some(AuthFailure::BadPassword));
        // Released once done.
        assert_eq!(check(a).await.unwrap(), Some(AuthFailure::BadPassword));
    }

    #[tokio::test]
    async fn every_credential_kind_and_every_failure() {
        let (a, b) = (random_token(), random_token());
        assert!(a.starts_with("owt_") && a.len() == 47 && a != b);
        let auth = Authenticator::new(vec![
            identity(
                "alice",
                vec![tok(&a, None), tok("old", Some(1000))],
                Some(hash_password("pw")),
                &["alice.example"],
            ),
            identity("bob", vec![tok(&b, None)], None, &["bob.example", "shared"]),
        ]);
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        let basic = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
            .into_bytes()
        };
        let name = |r: Result<Arc<Identity>, AuthFailure>| r.map(|i| i.name.clone());
        let none: &[String] = &[];
        assert_eq!(
            name(auth.authenticate(Some(&bearer(&a)), none, 0, SRC).await),
            Ok("alice".into())
        );
        assert_eq!(
            name(auth.authenticate(Some(&bearer(&b)), none, 0, SRC).await),
            Ok("bob".into())
        );
        assert_eq!(
            name(auth.authenticate(Some(&bearer("nope")), none, 0, SRC).await),
            Err(AuthFailure::UnknownToken)
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&bearer("old")), none, 999, SRC)
                    .await
            ),
            Ok("alice".into())
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&bearer("old")), none, 1000, SRC)
                    .await
            ),
            Err(AuthFailure::ExpiredToken)
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&basic("alice", "pw")), none, 0, SRC)
                    .await
            ),
            Ok("alice".into())
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&basic("alice", "pw")), none, 0, SRC)
                    .await
            ),
            Ok("alice".into()),
            "cached"
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&basic("alice", "bad")), none, 0, SRC)
                    .await
            ),
            Err(AuthFailure::BadPassword)
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&basic("mallory", "pw")), none, 0, SRC)
                    .await
            ),
            Err(AuthFailure::BadPassword)
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&basic("bob", "pw")), none, 0, SRC)
                    .await
            ),
            Err(AuthFailure::BadPassword)
        );
        assert_eq!(
            name(auth.authenticate(Some(b"Digest x"), none, 0, SRC).await),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            name(auth.authenticate(None, none, 0, SRC).await),
            Err(AuthFailure::Missing)
        );
        let certs = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            name(
                auth.authenticate(None, &certs(&["ALICE.example"]), 0, SRC)
                    .await
            ),
            Ok("alice".into())
        );
        assert_eq!(
            name(
                auth.authenticate(None, &certs(&["carol.example"]), 0, SRC)
                    .await
            ),
            Err(AuthFailure::UnmappedCertificate)
        );
        assert_eq!(
            name(
                auth.authenticate(None, &certs(&["alice.example", "bob.example"]), 0, SRC)
                    .await
            ),
            Err(AuthFailure::AmbiguousCertificate)
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&bearer(&b)), &certs(&["alice.example"]), 0, SRC)
                    .await
            ),
            Err(AuthFailure::Disagree)
        );
        assert_eq!(
            name(
                auth.authenticate(Some(&bearer(&a)), &certs(&["alice.example"]), 0, SRC)
                    .await
            ),
            Ok("alice".into())
        );
        // An unmapped certificate does not stand in the way of a valid token.
        assert_eq!(
            name(
                auth.authenticate(Some(&bearer(&a)), &certs(&["carol.example"]), 0, SRC)
                    .await
            ),
            Ok("alice".into())
        );
    }
}
