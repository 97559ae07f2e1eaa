//! The proxy's configuration file (`warden proxy --config PATH`): TOML read with
//! positions, every problem reported as `file:line:col: message`, unknown keys
//! refused with a "did you mean". The reference is `docs/PROXY.md`.

use super::models::{ModelGlob, RegistryGlob};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml_edit::{ImDocument, Value};
use warden_events::sink::SinkSpec;

type Span = Option<std::ops::Range<usize>>;
use warden_policy::walk::{Entry, FileCtx, TableRef, array_of_tables, type_name};
use warden_policy::{Diagnostic, parse_net};

const TOP_KEYS: &[&str] = &[
    "listen",
    "upstream",
    "audit",
    "audit_body_sha256",
    "pass_cors",
    "upstream_keepalive",
    "report",
    "metrics",
    "tls",
    "limits",
    "brute_force",
    "pull_from",
    "content_rule",
    "identity",
];
const BRUTE_FORCE_KEYS: &[&str] = &["failures", "window", "ban", "identity_failures", "exempt"];
const TLS_KEYS: &[&str] = &["cert", "key", "client_ca"];
const LIMIT_KEYS: &[&str] = &[
    "max_connections",
    "handshake_timeout",
    "header_timeout",
    "body_timeout",
    "upstream_timeout",
    "send_timeout",
    "idle_timeout",
    "max_headers",
    "max_buffered",
    "max_buffered_per_identity",
    "max_buffered_per_source",
    "max_connections_per_ip",
];
const IDENTITY_KEYS: &[&str] = &[
    "name",
    "tokens",
    "basic",
    "mtls",
    "models",
    "admin",
    "sources",
    "windows",
    "rate",
    "concurrency",
    "max_body",
    "max_tokens",
    "max_prompt_chars",
    "pull_from",
];
const CONTENT_RULE_KEYS: &[&str] = &["name", "pattern", "action"];
const TOKEN_KEYS: &[&str] = &["hash", "expires"];

pub const DEFAULT_MAX_BODY: u64 = 16 << 20;
pub const DEFAULT_UPSTREAM_KEEPALIVE: usize = 32;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub tls: Tls,
    pub audit: Vec<SinkSpec>,
    pub audit_body_sha256: bool,
    /// Forward the upstream's CORS headers (dropped by default).
    pub pass_cors: bool,
    /// Idle upstream connections kept per identity for reuse (0: a fresh
    /// connection, so a kernel connection event, per request).
    pub upstream_keepalive: usize,
    /// The daemon's socket for upstream-connection reports (correlation).
    pub report: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when unset.
    pub metrics: Option<SocketAddr>,
    pub limits: Limits,
    pub brute_force: BruteForce,
    /// Registries and namespaces pulls may come from and pushes may go to
    /// (empty: any), unless an identity says otherwise.
    pub pull_from: Vec<RegistryGlob>,
    /// `[[content_rule]]`: patterns that flag or refuse a request's prompt.
    pub content_rules: Vec<crate::content::ContentRule>,
    pub identities: Vec<Arc<Identity>>,
}

/// `[brute_force]`: failed authentications that raise an alert and a ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BruteForce {
    /// Failures from one source within `window` that ban it.
    pub failures: u32,
    pub window: Duration,
    /// How long a ban lasts (0: alert only).
    pub ban: Duration,
    /// Failures naming one identity (a basic-auth user) within `window`, from
    /// anywhere, that raise an alert (identities are never locked out).
    pub identity_failures: u32,
    /// Sources never banned (alerts still go out).
    pub exempt: Vec<ipnet::IpNet>,
}

impl Default for BruteForce {
    fn default() -> Self {
        Self {
            failures: 20,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(600),
            identity_failures: 100,
            exempt: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// The Host header sent upstream (`IP:PORT`, which Ollama's host check accepts).
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// A request body may pause at most this long between bytes.
    pub body_timeout: Duration,
    /// The upstream may be silent at most this long (before its first byte and
    /// between chunks); a generation that keeps streaming is never cut.
    pub upstream_timeout: Duration,
    /// A client must take response data within this (one that stops reading
    /// would otherwise hold Ollama's generation slot).
    pub send_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub max_headers: usize,
    /// Bytes of request bodies read whole (to be judged) at once, all clients together.
    pub max_buffered: u64,
    /// The most of `max_buffered` one identity's bodies may hold at once.
    pub max_buffered_per_identity: u64,
    /// The most of `max_buffered` one client address's bodies may hold at once.
    pub max_buffered_per_source: u64,
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(600),
            send_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_headers: 64,
            max_buffered: 256 << 20,
            max_buffered_per_identity: 64 << 20,
            max_buffered_per_source: 64 << 20,
            max_connections_per_ip: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// Unix seconds after which the token is refused.
    pub expires: Option<i64>,
}

/// A weekly window in UTC: days (bit 0 = Monday) and minutes since midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub days: u8,
    pub start_min: u16,
    pub end_min: u16,
}

impl Window {
    /// `weekday` 0 = Monday; a window whose end is before its start spans midnight.
    pub fn contains(&self, weekday: u8, minute: u16) -> bool {
        let day = |d: u8| self.days & (1 << (d % 7)) != 0;
        if self.start_min <= self.end_min {
            day(weekday) && (self.start_min..self.end_min).contains(&minute)
        } else {
            (day(weekday) && minute >= self.start_min)
                || (day((weekday + 6) % 7) && minute < self.end_min)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub tokens: Vec<Token>,
    /// PHC string of an argon2id hash (basic auth, user = `name`).
    pub basic: Option<String>,
    /// Client-certificate names (SAN DNS or e-mail, or subject CN) that are this identity.
    pub mtls: Vec<String>,
    pub models: Vec<ModelGlob>,
    pub admin: bool,
    /// Client addresses allowed (empty = any).
    pub sources: Vec<IpNet>,
    /// When requests are allowed (empty = always).
    pub windows: Vec<Window>,
    /// Requests per minute (token bucket, a minute's worth of burst).
    pub rate: Option<Rate>,
    pub concurrency: Option<u32>,
    pub max_body: u64,
    pub max_tokens: Option<u64>,
    /// The prompt's length in characters (`prompt`, `system`, `messages`, ...).
    pub max_prompt_chars: Option<u64>,
    /// This identity's registries (`None`: the global `pull_from`).
    pub pull_from: Option<Vec<RegistryGlob>>,
}

impl Identity {
    pub fn may_use(&self, model: &super::models::ModelName) -> bool {
        self.models.iter().any(|g| g.matches(model))
    }

    /// Whether this identity may run `model`: admins any local model, others
    /// those their globs allow; a cloud model only where a pattern names it
    /// (`*` and admin rights do not: it spends the server's account).
    pub fn may_run(&self, model: &super::models::ModelName) -> bool {
        if model.is_cloud() {
            return self
                .models
                .iter()
                .any(|g| g.as_str() != "*" && g.matches(model));
        }
        self.admin || self.may_use(model)
    }

    /// Whether a pull from (or push to) `model`'s registry is allowed.
    pub fn may_reach_registry(
        &self,
        global: &[RegistryGlob],
        model: &super::models::ModelName,
    ) -> bool {
        let allowed = self.pull_from.as_deref().unwrap_or(global);
        allowed.is_empty() || allowed.iter().any(|g| g.matches(model))
    }

    /// True if every model is allowed (`models = ["*"]`).
    pub fn all_models(&self) -> bool {
        self.models.iter().any(|g| g.as_str() == "*")
    }
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic::new(
            warden_policy::Origin::start_of(path),
            format!("cannot read: {e}"),
        )]
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut ctx = FileCtx::new(Arc::from(path), text);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let msg = e.message().lines().map(str::trim).filter(|l| !l.is_empty());
            let msg = msg.collect::<Vec<_>>().join("; ");
            ctx.error(e.span(), format!("TOML syntax error: {msg}"));
            return Err(ctx.diagnostics);
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let root = TableRef::Table(doc.as_table());
    root.check_keys(&mut ctx, TOP_KEYS, "at top level");
    let mut r = Reader { ctx, base };

    let listen = r.required(root, "listen", |r, e| {
        let s = r.string(e)?;
        s.parse::<SocketAddr>()
            .map_err(|_| r.err(e, format!("`listen` must be IP:PORT, found `{s}`")))
            .ok()
    });
    let upstream = r.required(root, "upstream", Reader::upstream);
    let tls = r.required(root, "tls", Reader::tls);
    let audit = match root.get("audit") {
        None => vec!["stdout".parse().expect("stdout is a sink")],
        Some(e) => r
            .strings(e)
            .into_iter()
            .filter_map(|(s, at)| {
                let mut spec = s
                    .parse::<SinkSpec>()
                    .map_err(|m| r.ctx.error(at, format!("audit sink `{s}`: {m}")))
                    .ok()?;
                // A relative file is relative to the config file, like the TLS files.
                if let warden_events::sink::Target::File { path, .. } = &mut spec.target {
                    *path = r.base.join(&*path);
                }
                Some(spec)
            })
            .collect(),
    };
    let audit_body_sha256 = root
        .get("audit_body_sha256")
        .and_then(|e| r.bool(e))
        .unwrap_or(false);
    let report = root.get("report").and_then(|e| r.path(e));
    let metrics = root.get("metrics").and_then(|e| {
        let s = r.string(e)?;
        s.parse::<SocketAddr>()
            .map_err(|_| r.err(e, format!("`metrics` must be IP:PORT, found `{s}`")))
            .ok()
    });
    let pass_cors = root
        .get("pass_cors")
        .and_then(|e| r.bool(e))
        .unwrap_or(false);
    let upstream_keepalive = root
        .get("upstream_keepalive")
        .and_then(|e| r.int(e, 0, 1024))
        .map_or(DEFAULT_UPSTREAM_KEEPALIVE, |n| n as usize);
    let limits = root
        .get("limits")
        .map_or_else(Limits::default, |e| r.limits(e));
    let brute_force = root
        .get("brute_force")
        .map_or_else(BruteForce::default, |e| r.brute_force(e));
    let pull_from = r.parsed_list(root, "pull_from", RegistryGlob::parse);
    let content_rules = root
        .get("content_rule")
        .map(|e| r.content_rules(e))
        .unwrap_or_default();
    let identities = r.identities(root, tls.as_ref().is_some_and(|t| t.client_ca.is_some()));

    if !r.ctx.diagnostics.is_empty() {
        let mut d = r.ctx.diagnostics;
        d.sort_by(|a, b| a.origin.cmp(&b.origin));
        return Err(d);
    }
    Ok(Config {
        listen: listen.expect("checked"),
        upstream: upstream.expect("checked"),
        tls: tls.expect("checked"),
        audit,
        audit_body_sha256,
        pass_cors,
        upstream_keepalive,
        report,
        metrics,
        limits,
        brute_force,
        pull_from,
        content_rules,
        identities,
    })
}

struct Reader<'a, 'b> {
    ctx: FileCtx<'a>,
    base: &'b Path,
}

impl Reader<'_, '_> {
    /// Records an error at an entry's value; returns `()` for `map_err` chains.
    fn err(&mut self, e: Entry<'_>, message: impl Into<String>) {
        self.ctx.error(e.span(), message);
    }

    fn required<T>(
        &mut self,
        t: TableRef<'_>,
        key: &str,
        read: impl FnOnce(&mut Self, Entry<'_>) -> Option<T>,
    ) -> Option<T> {
        match t.get(key) {
            Some(e) => read(self, e),
            None => {
                self.ctx.error(t.span(), format!("missing `{key}`"));
                None
            }
        }
    }

    fn string<'e>(&mut self, e: Entry<'e>) -> Option<&'e str> {
        let s = e.value().and_then(Value::as_str);
        if s.is_none() {
            let msg = format!(
                "`{}` must be a string, found {}",
                e.key.get(),
                type_name(e.item)
            );
            self.err(e, msg);
        }
        s
    }

    fn bool(&mut self, e: Entry<'_>) -> Option<bool> {
        let b = e.value().and_then(Value::as_bool);
        if b.is_none() {
            let msg = format!(
                "`{}` must be true or false, found {}",
                e.key.get(),
                type_name(e.item)
            );
            self.err(e, msg);
        }
        b
    }

    fn int(&mut self, e: Entry<'_>, min: i64, max: i64) -> Option<i64> {
        match e.value().and_then(Value::as_integer) {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let msg = format!(
                    "`{}` must be an integer from {min} to {max}, found {}",
                    e.key.get(),
                    e.item.as_value().map_or_else(
                        || type_name(e.item).to_owned(),
                        |v| v.to_string().trim().to_owned()
                    )
                );
                self.err(e, msg);
                None
            }
        }
    }

    /// An array of strings, each with its span.
    fn strings<'e>(&mut self, e: Entry<'e>) -> Vec<(&'e str, Span)> {
        let Some(a) = e.value().and_then(Value::as_array) else {
            let msg = format!(
                "`{}` must be an array of strings, found {}",
                e.key.get(),
                type_name(e.item)
            );
            self.err(e, msg);
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in a.iter() {
            match v.as_str() {
                Some(s) => out.push((s, v.span())),
                None => self.ctx.error(
                    v.span(),
                    format!(
                        "`{}` must contain strings, found {}",
                        e.key.get(),
                        v.type_name()
                    ),
                ),
            }
        }
        out
    }

    fn path(&mut self, e: Entry<'_>) -> Option<PathBuf> {
        let s = self.string(e)?;
        if s.is_empty() {
            self.err(e, format!("`{}` must not be empty", e.key.get()));
            return None;
        }
        Some(self.base.join(s))
    }

    fn duration(&mut self, e: Entry<'_>) -> Option<Duration> {
        let s = self.string(e)?;
        parse_duration(s)
            .map_err(|m| self.err(e, format!("`{}`: {m}", e.key.get())))
            .ok()
    }

    fn upstream(&mut self, e: Entry<'_>) -> Option<Upstream> {
        let s = self.string(e)?;
        let authority = s
            .strip_prefix("http://")
            .map(|a| a.strip_suffix('/').unwrap_or(a));
        match authority.and_then(|a| a.parse::<SocketAddr>().ok().map(|sa| (a, sa))) {
            Some((a, addr)) => Some(Upstream {
                addr,
                host: a.to_owned(),
            }),
            None => {
                self.err(e, format!("`upstream` must be http://IP:PORT (the Ollama server, usually http://127.0.0.1:11434), found `{s}`"));
                None
            }
        }
    }

    fn tls(&mut self, e: Entry<'_>) -> Option<Tls> {
        let Some(t) = TableRef::from_item(e.item) else {
            self.err(
                e,
                format!("`tls` must be a table, found {}", type_name(e.item)),
            );
            return None;
        };
        t.check_keys(&mut self.ctx, TLS_KEYS, "in [tls]");
        let cert = self.required(t, "cert", Reader::path);
        let key = self.required(t, "key", Reader::path);
        let client_ca = t.get("client_ca").and_then(|e| self.path(e));
        Some(Tls {
            cert: cert?,
            key: key?,
            client_ca,
        })
    }

    fn limits(&mut self, e: Entry<'_>) -> Limits {
        let mut l = Limits::default();
        let Some(t) = TableRef::from_item(e.item) else {
            self.err(
                e,
                format!("`limits` must be a table, found {}", type_name(e.item)),
            );
            return l;
        };
        t.check_keys(&mut self.ctx, LIMIT_KEYS, "in [limits]");
        if let Some(n) = t
            .get("max_connections")
            .and_then(|e| self.int(e, 1, 1 << 20))
        {
            l.max_connections = n as usize;
        }
        if let Some(n) = t.get("max_headers").and_then(|e| self.int(e, 8, 1024)) {
            l.max_headers = n as usize;
        }
        if let Some(n) = t
            .get("max_connections_per_ip")
            .and_then(|e| self.int(e, 1, 1 << 20))
        {
            l.max_connections_per_ip = n as usize;
        }
        let (mut per_identity, mut per_source) = (None, None);
        for key in [
            "max_buffered",
            "max_buffered_per_identity",
            "max_buffered_per_source",
        ] {
            let Some(e) = t.get(key) else { continue };
            let Some(s) = self.string(e) else { continue };
            let n = match parse_size(s) {
                Ok(n) if n <= 1 << 40 => n,
                Ok(_) => {
                    self.err(e, format!("`{key}` is at most 1TiB"));
                    continue;
                }
                Err(m) => {
                    self.err(e, format!("{key} `{s}`: {m}"));
                    continue;
                }
            };
            match key {
                "max_buffered" => l.max_buffered = n,
                "max_buffered_per_identity" => per_identity = Some(n),
                _ => per_source = Some(n),
            }
        }
        // Shares default to a quarter of the total.
        l.max_buffered_per_identity = per_identity.unwrap_or(l.max_buffered / 4);
        l.max_buffered_per_source = per_source.unwrap_or(l.max_buffered / 4);
        for (key, slot) in [
            ("handshake_timeout", &mut l.handshake_timeout),
            ("header_timeout", &mut l.header_timeout),
            ("body_timeout", &mut l.body_timeout),
            ("upstream_timeout", &mut l.upstream_timeout),
            ("send_timeout", &mut l.send_timeout),
            ("idle_timeout", &mut l.idle_timeout),
        ] {
            if let Some(d) = t.get(key).and_then(|e| self.duration(e)) {
                *slot = d;
            }
        }
        l
    }

    fn brute_force(&mut self, e: Entry<'_>) -> BruteForce {
        let mut b = BruteForce::default();
        let Some(t) = TableRef::from_item(e.item) else {
            self.err(
                e,
                format!("`brute_force` must be a table, found {}", type_name(e.item)),
            );
            return b;
        };
        t.check_keys(&mut self.ctx, BRUTE_FORCE_KEYS, "in [brute_force]");
        if let Some(n) = t.get("failures").and_then(|e| self.int(e, 1, 1 << 20)) {
            b.failures = n as u32;
        }
        if let Some(n) = t
            .get("identity_failures")
            .and_then(|e| self.int(e, 1, 1 << 20))
        {
            b.identity_failures = n as u32;
        }
        if let Some(d) = t.get("window").and_then(|e| self.duration(e)) {
            b.window = d;
        }
        if let Some(e) = t.get("ban") {
            // "0s": alerts only, no bans.
            if matches!(self.string(e), Some("0" | "0s")) {
                b.ban = Duration::ZERO;
            } else if let Some(d) = self.duration(e) {
                b.ban = d;
            }
        }
        if let Some(e) = t.get("exempt") {
            b.exempt = self
                .strings(e)
                .into_iter()
                .filter_map(|(s, at)| {
                    parse_net(s)
                        .map_err(|m| self.ctx.error(at, m.to_string()))
                        .ok()
                })
                .collect();
        }
        b
    }

    fn identities(&mut self, root: TableRef<'_>, have_client_ca: bool) -> Vec<Arc<Identity>> {
        let Some(e) = root.get("identity") else {
            self.ctx
                .error(None, "no [[identity]]: every request would be refused");
            return Vec::new();
        };
        let Some(tables) = array_of_tables(e.item) else {
            self.err(
                e,
                format!(
                    "`identity` must be an array of tables ([[identity]]), found {}",
                    type_name(e.item)
                ),
            );
            return Vec::new();
        };
        let mut out: Vec<Arc<Identity>> = Vec::new();
        let mut names: HashMap<String, ()> = HashMap::new();
        let mut tokens: HashMap<[u8; 32], String> = HashMap::new();
        let mut certs: HashMap<String, String> = HashMap::new();
        for t in tables {
            let t = match t {
                Ok(t) => t,
                Err(v) => {
                    self.ctx
                        .error(v.span(), "`identity` entries must be tables");
                    continue;
                }
            };
            let Some(id) = self.identity(t, have_client_ca) else {
                continue;
            };
            let at = t.get("name").map(|e| e.span()).unwrap_or_else(|| t.span());
            if names.insert(id.name.to_lowercase(), ()).is_some() {
                self.ctx.error(
                    at.clone(),
                    format!("identity `{}` is defined twice", id.name),
                );
            }
            for tok in &id.tokens {
                if let Some(other) = tokens.insert(tok.hash, id.name.clone()) {
                    self.ctx.error(at.clone(), format!("identity `{}` shares a token with `{other}`: a token must name one identity", id.name));
                }
            }
            for c in &id.mtls {
                if let Some(other) = certs.insert(c.to_ascii_lowercase(), id.name.clone()) {
                    self.ctx.error(
                        at.clone(),
                        format!(
                            "identity `{}` shares the client certificate name `{c}` with `{other}`",
                            id.name
                        ),
                    );
                }
            }
            out.push(Arc::new(id));
        }
        out
    }

    fn identity(&mut self, t: TableRef<'_>, have_client_ca: bool) -> Option<Identity> {
        t.check_keys(&mut self.ctx, IDENTITY_KEYS, "in [[identity]]");
        let before = self.ctx.diagnostics.len();
        let name = self.required(t, "name", |r, e| r.identity_name(e));
        let tokens = t.get("tokens").map(|e| self.tokens(e)).unwrap_or_default();
        let basic = t.get("basic").and_then(|e| self.basic_hash(e));
        let mtls = t
            .get("mtls")
            .map(|e| self.mtls_names(e, have_client_ca))
            .unwrap_or_default();
        let models = self.parsed_list(t, "models", ModelGlob::parse);
        let admin = t.get("admin").and_then(|e| self.bool(e)).unwrap_or(false);
        let sources = self.parsed_list(t, "sources", |s| parse_net(s).map_err(|m| m.to_string()));
        let windows = self.parsed_list(t, "windows", |s| {
            parse_window(s).map_err(|m| format!("window `{s}`: {m}"))
        });
        let rate = t.get("rate").and_then(|e| {
            let s = self.string(e)?;
            parse_rate(s)
                .map_err(|m| self.err(e, format!("rate `{s}`: {m}")))
                .ok()
        });
        let concurrency = t
            .get("concurrency")
            .and_then(|e| self.int(e, 1, 1 << 20))
            .map(|n| n as u32);
        let max_body = t
            .get("max_body")
            .and_then(|e| self.size(e, "max_body"))
            .unwrap_or(DEFAULT_MAX_BODY);
        let max_tokens = t
            .get("max_tokens")
            .and_then(|e| self.int(e, 1, i64::MAX))
            .map(|n| n as u64);
        let max_prompt_chars = t
            .get("max_prompt_chars")
            .and_then(|e| self.int(e, 1, i64::MAX))
            .map(|n| n as u64);
        let pull_from = t
            .get("pull_from")
            .is_some()
            .then(|| self.parsed_list(t, "pull_from", RegistryGlob::parse));
        let no_credentials = tokens.is_empty() && basic.is_none() && mtls.is_empty();
        if no_credentials && self.ctx.diagnostics.len() == before {
            self.ctx.error(
                t.span(),
                "identity has no credentials: give `tokens`, `basic` or `mtls`",
            );
        }
        Some(Identity {
            name: name?,
            tokens,
            basic,
            mtls,
            models,
            admin,
            sources,
            windows,
            rate,
            concurrency,
            max_body,
            max_tokens,
            max_prompt_chars,
            pull_from,
        })
    }

    /// `[[content_rule]]` blocks: a unique name, a pattern (Rust regex syntax,
    /// compiled within a size bound) and `flag` (default) or `refuse`.
    fn content_rules(&mut self, e: Entry<'_>) -> Vec<crate::content::ContentRule> {
        let Some(blocks) = array_of_tables(e.item) else {
            self.err(
                e,
                "`content_rule` must be an array of tables ([[content_rule]])",
            );
            return Vec::new();
        };
        let mut out: Vec<crate::content::ContentRule> = Vec::new();
        for block in blocks {
            let Ok(t) = block else { continue };
            t.check_keys(&mut self.ctx, CONTENT_RULE_KEYS, "in [[content_rule]]");
            let origin = self.ctx.origin(t.span()).to_string();
            let name = self.required(t, "name", |r, e| r.identity_name(e));
            let pattern = self.required(t, "pattern", |r, e| {
                let s = r.string(e)?;
                regex::RegexBuilder::new(s)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|err| r.err(e, format!("pattern: {err}")))
                    .ok()
            });
            let action = match t.get("action") {
                None => Some(crate::content::Action::Flag),
                Some(e) => match self.string(e) {
                    Some("flag") => Some(crate::content::Action::Flag),
                    Some("refuse") => Some(crate::content::Action::Refuse),
                    Some(other) => {
                        self.err(e, format!("action `{other}`: `flag` or `refuse`"));
                        None
                    }
                    None => None,
                },
            };
            if let (Some(name), Some(pattern), Some(action)) = (name, pattern, action) {
                if out.iter().any(|r| r.name == name) {
                    self.ctx
                        .error(t.span(), format!("a second content rule named `{name}`"));
                    continue;
                }
                out.push(crate::content::ContentRule {
                    name,
                    pattern,
                    action,
                    origin,
                });
            }
        }
        out
    }

    fn identity_name(&mut self, e: Entry<'_>) -> Option<String> {
        let s = self.string(e)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
        if !ok {
            let msg =
                format!("identity name `{s}` must be 1-64 characters of letters, digits, . _ @ -");
            self.err(e, msg);
        }
        ok.then(|| s.to_owned())
    }

    /// An argon2id hash within bounds a login can afford.
    fn basic_hash(&mut self, e: Entry<'_>) -> Option<String> {
        let s = self.string(e)?;
        let affordable = |h: &argon2::PasswordHash<'_>| {
            argon2::Params::try_from(h)
                .is_ok_and(|p| p.m_cost() <= 256 * 1024 && p.t_cost() <= 10 && p.p_cost() <= 4)
        };
        match argon2::PasswordHash::new(s) {
            Ok(h) if h.algorithm.as_str() == "argon2id" && affordable(&h) => Some(s.to_owned()),
            _ => {
                self.err(e, "`basic` must be an argon2id hash ($argon2id$v=19$...) with at most 256 MiB, 10 passes and 4 lanes, as printed by `warden token basic NAME`");
                None
            }
        }
    }

    fn mtls_names(&mut self, e: Entry<'_>, have_client_ca: bool) -> Vec<String> {
        let names: Vec<String> = self
            .strings(e)
            .into_iter()
            .map(|(s, _)| s.to_owned())
            .collect();
        if !have_client_ca && !names.is_empty() {
            self.err(
                e,
                "`mtls` needs `client_ca` in [tls] to verify client certificates",
            );
        }
        names
    }

    /// The array of strings at `key`, each parsed; each that does not parse is
    /// an error at its place.
    fn parsed_list<T>(
        &mut self,
        t: TableRef<'_>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let Some(e) = t.get(key) else {
            return Vec::new();
        };
        self.strings(e)
            .into_iter()
            .filter_map(|(s, at)| parse(s).map_err(|m| self.ctx.error(at, m)).ok())
            .collect()
    }

    /// A size: an integer of bytes, or a string such as `16MiB`.
    fn size(&mut self, e: Entry<'_>, what: &str) -> Option<u64> {
        match e.value() {
            Some(Value::Integer(n)) if *n.value() > 0 => Some(*n.value() as u64),
            _ => {
                let s = self.string(e)?;
                parse_size(s)
                    .map_err(|m| self.err(e, format!("{what} `{s}`: {m}")))
                    .ok()
            }
        }
    }

    fn tokens(&mut self, e: Entry<'_>) -> Vec<Token> {
        let Some(a) = e.value().and_then(Value::as_array) else {
            self.err(
                e,
                format!("`tokens` must be an array, found {}", type_name(e.item)),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in a.iter() {
            let (hash, expires) = match v {
                Value::String(s) => (Some((s.value().as_str(), v)), None),
                Value::InlineTable(it) => {
                    let t = TableRef::Inline(it);
                    t.check_keys(&mut self.ctx, TOKEN_KEYS, "in a token");
                    let hash = t
                        .get("hash")
                        .and_then(|e| e.value().and_then(|v| v.as_str().map(|s| (s, v))));
                    if hash.is_none() {
                        self.ctx
                            .error(v.span(), "a token table needs `hash = \"sha256:...\"`");
                    }
                    let expires = t.get("expires").and_then(|e| match e.value() {
                        Some(Value::Datetime(d)) => datetime_unix(d.value())
                            .map_err(|m| self.err(e, format!("`expires`: {m}")))
                            .ok(),
                        _ => {
                            self.err(
                                e,
                                "`expires` must be a TOML date-time such as 2027-01-31T00:00:00Z",
                            );
                            None
                        }
                    });
                    (hash, expires)
                }
                other => {
                    self.ctx.error(
                        other.span(),
                        "a token is \"sha256:HEX\" or { hash = \"sha256:HEX\", expires = DATE }",
                    );
                    (None, None)
                }
            };
            if let Some((s, v)) = hash {
                match parse_token_hash(s) {
                    Some(hash) => out.push(Token { hash, expires }),
                    None => self.ctx.error(v.span(), "a token hash is `sha256:` and 64 hex digits, as printed by `warden token new NAME`"),
                }
            }
        }
        out
    }
}

pub fn parse_token_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub use warden_runtime::units::{parse_duration, parse_size};

/// A request rate: a token bucket holding one period's requests (`burst`),
/// refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

/// `N/s`, `N/min` or `N/h`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let usage = "expected N/s, N/min or N/h";
    let (n, per) = s.split_once('/').ok_or(usage)?;
    let n: u32 = n.trim().parse().map_err(|_| usage)?;
    let secs = match per.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(usage.into()),
    };
    if n == 0 {
        return Err("must allow at least one request".into());
    }
    Ok(Rate {
        per_sec: f64::from(n) / secs,
        burst: f64::from(n),
    })
}

/// `DAYS HH:MM-HH:MM` in UTC; DAYS is `*`, a day (`mon`) or a range (`mon-fri`),
/// comma-separated.
pub fn parse_window(s: &str) -> Result<Window, String> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let usage = "expected e.g. `mon-fri 08:00-18:00` (UTC)";
    let (days_s, times) = s.trim().split_once(' ').ok_or(usage)?;
    let day = |d: &str| {
        DAYS.iter()
            .position(|x| x.eq_ignore_ascii_case(d))
            .ok_or(format!("unknown day `{d}`"))
    };
    let mut days = 0u8;
    for part in days_s.split(',') {
        if part == "*" {
            days = 0x7f;
        } else if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (day(a)?, day(b)?);
            let mut d = a;
            loop {
                days |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        } else {
            days |= 1 << day(part)?;
        }
    }
    let hm = |t: &str| -> Result<u16, String> {
        let (h, m) = t.split_once(':').ok_or(usage)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| usage)?, m.parse().map_err(|_| usage)?);
        if h > 24 || m > 59 || (h == 24 && m != 0) {
            return Err(format!("`{t}` is not a time of day"));
        }
        Ok(h * 60 + m)
    };
    let (a, b) = times.trim().split_once('-').ok_or(usage)?;
    let (start_min, end_min) = (hm(a)?, hm(b)?);
    if start_min == end_min {
        return Err("the window is empty".into());
    }
    Ok(Window {
        days,
        start_min,
        end_min,
    })
}

fn datetime_unix(d: &toml_edit::Datetime) -> Result<i64, String> {
    let date = d.date.ok_or("needs a date")?;
    let (h, m, s) = d.time.map_or((0, 0, 0), |t| (t.hour, t.minute, t.second));
    let offset_min: i64 = match (d.time, d.offset) {
        (None, _) => 0,
        (Some(_), Some(toml_edit::Offset::Z)) => 0,
        (Some(_), Some(toml_edit::Offset::Custom { minutes })) => minutes.into(),
        (Some(_), None) => return Err("a time needs an offset (`Z` for UTC)".into()),
    };
    let days = days_from_civil(date.year.into(), date.month.into(), date.day.into());
    Ok(days * 86400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s) - offset_min * 60)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("/etc/w/proxy.toml"), text) {
            Ok(_) => vec![],
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    fn minimal(identity: &str) -> String {
        format!(
            "listen = \"127.0.0.1:8443\"\nupstream = \"http://127.0.0.1:11434\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[[identity]]\n{identity}\n"
        )
    }

    #[test]
    fn content_rules_are_checked_where_they_are_written() {
        let id = format!("name = \"a\"\ntokens = [\"{HASH}\"]\nmax_prompt_chars = 0\n");
        let text = format!(
            "{}[[content_rule]]\nname = \"x\"\npattern = \"(unclosed\"\n\
             [[content_rule]]\nname = \"y\"\npattern = \"ok\"\naction = \"block\"\n\
             [[content_rule]]\nname = \"z\"\npattern = \"ok\"\n\
             [[content_rule]]\nname = \"z\"\npattern = \"ok\"\n",
            minimal(&id)
        );
        let e = errors(&text);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("/etc/w/proxy.toml:9:20: `max_prompt_chars` must be"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("/etc/w/proxy.toml:13:11: pattern: regex parse error"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("/etc/w/proxy.toml:17:10: action `block`: `flag` or `refuse`"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with("/etc/w/proxy.toml:21:1: a second content rule named `z`"),
            "{e:?}"
        );
    }

    #[test]
    fn upstream_keepalive_defaults_to_32_and_is_bounded() {
        let id = format!("name = \"a\"\ntokens = [\"{HASH}\"]\n");
        let cfg = |top: &str| {
            parse(
                Path::new("/etc/w/proxy.toml"),
                &format!("{top}\n{}", minimal(&id)),
            )
        };
        assert_eq!(cfg("").unwrap().upstream_keepalive, 32);
        assert_eq!(cfg("upstream_keepalive = 0").unwrap().upstream_keepalive, 0);
        let e = errors(&format!("upstream_keepalive = 5000\n{}", minimal(&id)));
        assert!(e[0].starts_with("/etc/w/proxy.toml:1:22: "), "{e:?}");
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../policies/proxy/example.toml");
        let cfg = parse(Path::new("example.toml"), text).unwrap();
        assert_eq!(cfg.identities.len(), 3);
        assert_eq!(cfg.upstream.host, "127.0.0.1:11434");
        assert_eq!(cfg.identities[0].tokens[1].expires, Some(1_801_353_600));
        assert_eq!(
            cfg.identities[0].rate,
            Some(Rate {
                per_sec: 1.0,
                burst: 60.0
            })
        );
        assert_eq!(cfg.identities[2].max_body, 64 << 30);
        assert_eq!(cfg.limits.upstream_timeout, Duration::from_secs(600));
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let cfg = parse(
            Path::new("/etc/w/proxy.toml"),
            &minimal(&format!("name = \"a\"\ntokens = [\"{HASH}\"]")),
        )
        .unwrap();
        assert_eq!(cfg.tls.cert, Path::new("/etc/w/c.pem"));
        assert_eq!(cfg.identities[0].max_body, DEFAULT_MAX_BODY);
    }

    #[test]
    fn every_problem_has_a_position() {
        let e = errors(&minimal(&format!(
            "name = \"a\"\ntokens = [\"{HASH}\", \"sha256:12\"]\nmodels = [\"ok\", \"bad name\"]\nrate = \"5/fortnight\"\nsources = [\"10.0.0.0/33\"]\nwindows = [\"mon-fri 9-5\"]\nmtls = [\"x\"]\nadmn = true"
        )));
        let want = [
            "/etc/w/proxy.toml:8:86: a token hash is `sha256:` and 64 hex digits",
            "/etc/w/proxy.toml:9:17: `bad name` is not a model name",
            "/etc/w/proxy.toml:10:8: rate `5/fortnight`: expected N/s, N/min or N/h",
            "/etc/w/proxy.toml:11:12: `10.0.0.0/33`: prefix length /33",
            "/etc/w/proxy.toml:12:12: window `mon-fri 9-5`",
            "/etc/w/proxy.toml:13:8: `mtls` needs `client_ca`",
            "/etc/w/proxy.toml:14:1: unknown key `admn` in [[identity]]",
        ];
        for w in want {
            assert!(
                e.iter().any(|l| l.starts_with(w)),
                "missing {w:?} in {e:#?}"
            );
        }
        assert!(
            e.iter().any(|l| l.contains("(did you mean `admin`?)")),
            "{e:#?}"
        );
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn identities_must_be_distinct_and_credentialed() {
        let dup = format!(
            "name = \"a\"\ntokens = [\"{HASH}\"]\n[[identity]]\nname = \"A\"\ntokens = [\"{HASH}\"]\n[[identity]]\nname = \"c\"\nmodels = [\"*\"]"
        );
        let e = errors(&minimal(&dup));
        assert!(
            e.iter()
                .any(|l| l.contains("identity `A` is defined twice")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|l| l.contains("shares a token with `a`")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|l| l.contains("identity has no credentials")),
            "{e:#?}"
        );
        let e = errors("listen = \"x\"\nupstream = \"https://ollama:11434\"\n");
        assert!(
            e.iter()
                .any(|l| l.starts_with("/etc/w/proxy.toml:1:10: `listen` must be IP:PORT")),
            "{e:#?}"
        );
        assert!(e.iter().any(|l| l.starts_with("/etc/w/proxy.toml:2:12: `upstream` must be http://IP:PORT")), "{e:#?}");
        assert!(e.iter().any(|l| l.contains("missing `tls`")), "{e:#?}");
        assert!(e.iter().any(|l| l.contains("no [[identity]]")), "{e:#?}");
        let e = errors(&minimal(&format!(
            "name = \"a\"\ntokens = [{{ hash = \"{HASH}\", expires = 2027-01-01T00:00:00 }}]"
        )));
        assert!(
            e.iter().any(|l| l.contains("a time needs an offset")),
            "{e:#?}"
        );
        assert!(
            errors("listen = [")
                .iter()
                .any(|l| l.contains("TOML syntax error"))
        );
    }

    #[test]
    fn values() {
        assert_eq!(
            parse_rate("10/s"),
            Ok(Rate {
                per_sec: 10.0,
                burst: 10.0
            })
        );
        assert_eq!(
            parse_rate("90/h"),
            Ok(Rate {
                per_sec: 0.025,
                burst: 90.0
            })
        );
        assert!(parse_rate("0/min").is_err());
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("16 MB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        let w = parse_window("sat,sun 22:00-02:00").unwrap();
        assert_eq!((w.days, w.start_min, w.end_min), (0b110_0000, 1320, 120));
        assert_eq!(
            parse_window("fri-mon 00:00-24:00").unwrap().days,
            0b111_0001
        );
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
    }
}
