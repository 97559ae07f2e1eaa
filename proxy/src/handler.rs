//! One request, in the order it is judged: framing, canonical target, identity,
//! where and when, route, authorisation, limits, body, model; then the
//! canonical request is forwarded and the response relayed.
//!
//! Every request gets exactly one audit record, whatever happens to it.

use super::audit::{Audit, Record, now_ms};
use super::body;
use super::budget::Reservation;
use super::canon;
use super::config::{Config, Identity};
use super::identity::{AuthFailure, Authenticator};
use super::limits::{Limiter, Refusal};
use super::models::ModelName;
use super::relay::{self, BoxError, Finish, Relay, Upload, read_all};
use super::routes::{self, Group, ModelIn, NoRoute};
use super::upstream;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use warden_events::correlate::ProxyReport;
use warden_runtime::sync::SharedLock;

pub type RespBody = BoxBody<Bytes, BoxError>;

/// Listings are read whole to be filtered; larger ones are refused.
const MAX_LISTING: u64 = 32 << 20;
const MAX_LOGGED_TARGET: usize = 256;
/// Request header bytes accepted (HTTP/1.1 and HTTP/2 alike).
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Bodies up to this size are judged on the async worker (cheaper than a hop).
const INLINE_BODY: u64 = 64 << 10;

/// One configuration generation and what is built from it.
pub struct Runtime {
    pub cfg: Config,
    pub auth: Authenticator,
}

/// State shared by every connection.
pub struct Shared {
    pub runtime: std::sync::RwLock<Arc<Runtime>>,
    pub limiter: Limiter,
    pub audit: Arc<Audit>,
    /// Reports upstream connections to the daemon (when `report` is set).
    pub reporter: Option<super::report::Reporter>,
    /// KiB of request bodies being read whole, across all requests.
    pub body_budget: Arc<super::budget::Budget>,
    /// Failed authentications and bans (kept across reloads; `[brute_force]`
    /// changes apply at restart).
    pub guard: super::guard::Guard,
    /// Upstream connections kept for reuse, per identity.
    pub upstream_pool: super::upstream::Pool,
    id_prefix: u32,
    next_id: AtomicU64,
}

impl Shared {
    pub fn new(runtime: Runtime, audit: Audit, reporter: Option<super::report::Reporter>) -> Self {
        let l = &runtime.cfg.limits;
        let body_budget = super::budget::Budget::new(
            l.max_buffered,
            l.max_buffered_per_identity,
            l.max_buffered_per_source,
        );
        let guard = super::guard::Guard::new(runtime.cfg.brute_force.clone());
        let mut b = [0u8; 4];
        // SAFETY: valid buffer of 4 bytes.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
        Self {
            runtime: std::sync::RwLock::new(Arc::new(runtime)),
            limiter: Limiter::default(),
            audit: Arc::new(audit),
            reporter,
            body_budget,
            guard,
            upstream_pool: Default::default(),
            id_prefix: u32::from_ne_bytes(b),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.reading().clone()
    }

    /// A fresh request id (also for records of requests the HTTP layer refused).
    pub fn new_request_id(&self) -> String {
        self.request_id()
    }

    fn request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:012x}", self.id_prefix, n & 0xffff_ffff_ffff)
    }
}

/// What a connection knows about its client.
pub struct Client {
    pub addr: SocketAddr,
    /// The proxy's address the client connected to.
    pub local: SocketAddr,
    /// Names of the verified client certificate (empty without one).
    pub cert_names: Vec<String>,
    /// When the client certificate expires (unix seconds): checked per request,
    /// since a connection may outlive its certificate.
    pub cert_not_after: Option<i64>,
    pub activity: Arc<relay::Activity>,
}

/// Days before its end from which a client certificate is noted in the
/// audit records of its requests.
const CLIENT_CERT_NOTE_DAYS: i64 = 30;

/// A refusal: status, message for the client, reason for the audit record.
struct Refuse {
    status: StatusCode,
    message: &'static str,
    reason: String,
    close: bool,
    retry_after: Option<u64>,
}

fn refuse(status: StatusCode, message: &'static str, reason: impl Into<String>) -> Refuse {
    Refuse {
        status,
        message,
        reason: reason.into(),
        close: false,
        retry_after: None,
    }
}

pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    client: Arc<Client>,
) -> Result<Response<RespBody>, std::convert::Infallible> {
    let started = Instant::now();
    let rt = shared.runtime();
    let (req, incoming) = req.into_parts();
    let mut body = Some(incoming);
    let record = Record {
        request_id: shared.request_id(),
        time_ms: now_ms(),
        client: Some(client.addr),
        http_version: match req.version {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        method: req.method.as_str().chars().take(16).collect(),
        path: logged_target(&req),
        user_agent: req
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
        ..Record::default()
    };
    let id = record.request_id.clone();
    let mut finish = Finish::new(
        record,
        started,
        shared.audit.clone(),
        client.activity.begin(),
    );
    let judged = judge_and_forward(&req, &mut body, &shared, &rt, &client, &mut finish).await;
    let mut resp = match judged {
        Ok(resp) => resp,
        Err(r) => {
            // Read (a little of) what the client is still sending, so the
            // refusal reaches it instead of a reset.
            if let Some(b) = body.take().filter(|_| !r.close) {
                drain(b).await;
            }
            let record = finish.record();
            record.status = r.status.as_u16();
            record.refused = Some(r.reason);
            let body = serde_json::json!({ "error": r.message }).to_string();
            finish.emit(Some(body.len() as u64), None);
            let mut resp = Response::new(full(body));
            *resp.status_mut() = r.status;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            if r.status == StatusCode::UNAUTHORIZED {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"ollama-warden\", Basic realm=\"ollama-warden\"",
                    ),
                );
            }
            if let Some(secs) = r.retry_after {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            if r.close {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    Ok(resp)
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn logged_target(req: &http::request::Parts) -> String {
    let t = req.uri.path_and_query().map_or("", |p| p.as_str());
    t.chars().take(MAX_LOGGED_TARGET).collect()
}

/// HTTP/1.1 framing a second reader could read differently: refused, and the
/// connection closed (its next bytes cannot be trusted).
///
/// hyper's parser already refuses differing Content-Lengths, a final coding
/// other than `chunked` and malformed header lines, and when a request has both
/// Transfer-Encoding and Content-Length it drops the length, reads the body as
/// chunked and closes the connection after the response (RFC 9112 §6.3). What
/// is left to refuse here is what hyper accepts but a second reader might not.
/// Nothing here is forwarded raw: the upstream request is framed anew.
fn framing_problem(req: &http::request::Parts) -> Option<&'static str> {
    let h = &req.headers;
    if req.version != Version::HTTP_2 {
        let codings: Vec<&HeaderValue> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
        let only_chunked =
            codings.len() == 1 && codings[0].as_bytes().eq_ignore_ascii_case(b"chunked");
        if !codings.is_empty() && !only_chunked {
            return Some("unsupported Transfer-Encoding");
        }
        if req.uri.scheme().is_some() || req.uri.authority().is_some() {
            return Some("absolute-form request target");
        }
        if req.version == Version::HTTP_11 && h.get_all(header::HOST).iter().count() != 1 {
            return Some("HTTP/1.1 needs exactly one Host");
        }
    }
    if req.method == Method::CONNECT || h.contains_key(header::UPGRADE) {
        return Some("upgrades are not proxied");
    }
    None
}

async fn judge_and_forward(
    parts: &http::request::Parts,
    body_slot: &mut Option<Incoming>,
    shared: &Shared,
    rt: &Runtime,
    client: &Client,
    fin: &mut Finish,
) -> Result<Response<RespBody>, Refuse> {
    let started = fin.started();
    check_head(parts)?;
    let canonical = canonical_target(parts, fin.record())?;
    refuse_banned(shared, client)?;
    let id = authenticate(parts, shared, rt, client, fin.record()).await?;
    let route = authorize(parts, &canonical, &id, fin.record())?;
    let slot = shared.limiter.admit(&id).map_err(limit_refusal)?;
    let body = judged_body(
        parts,
        body_slot,
        route,
        &id,
        shared,
        rt,
        client,
        fin.record(),
    )
    .await?;
    fin.uploaded = body.uploaded.clone();
    let sent = forward(parts, &canonical, body, &id, shared, rt, client, fin).await?;
    let record = fin.record();
    record.upstream = Some(sent.conn);
    let (mut head, upstream_body) = sent.response.into_parts();
    record.status = head.status.as_u16();
    clean_response_headers(&mut head.headers, rt.cfg.pass_cors);
    if route.group == Group::List {
        if parts.method == Method::HEAD {
            // The upstream's length is the unfiltered listing's.
            head.headers.remove(header::CONTENT_LENGTH);
        } else if head.status == StatusCode::OK {
            let listing = read_listing(upstream_body, &rt.cfg).await;
            if listing.is_err() {
                // Not read to its end: the connection cannot carry another request.
                sent.task.abort();
            }
            let filtered = filtered_listing(&canonical.path, listing, &id)?;
            head.headers.remove(header::CONTENT_LENGTH);
            fin.record().ttfb = Some(started.elapsed());
            fin.emit(Some(filtered.len() as u64), None);
            drop(slot);
            return Ok(Response::from_parts(head, full(filtered)));
        }
    }
    let limits = &rt.cfg.limits;
    let relay = Relay::new(
        upstream_body,
        fin.take(),
        limits.upstream_timeout,
        limits.send_timeout,
        sent.task,
        slot,
        client.activity.clone(),
    );
    Ok(Response::from_parts(head, relay.boxed()))
}

/// The head as a whole: its size (hyper bounds it only while it is
/// incomplete: one that arrives whole in a single read can be larger) and its
/// framing. Either refusal closes the connection.
fn check_head(parts: &http::request::Parts) -> Result<(), Refuse> {
    let head_bytes: usize = parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if head_bytes > MAX_HEAD_BYTES {
        return Err(Refuse {
            close: true,
            ..refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large",
                "request headers too large",
            )
        });
    }
    if let Some(why) = framing_problem(parts) {
        return Err(Refuse {
            close: true,
            ..refuse(StatusCode::BAD_REQUEST, "bad request framing", why)
        });
    }
    Ok(())
}

/// The request target read the way Ollama's router reads it, or a refusal.
fn canonical_target(
    parts: &http::request::Parts,
    record: &mut Record,
) -> Result<canon::Canonical, Refuse> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let canonical = canon::canonicalize(target).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "ambiguous request target",
            e.to_string(),
        )
    })?;
    record.path = canonical.path.clone();
    record.query = canonical.query.clone();
    Ok(canonical)
}

/// A banned source is refused whatever it sends (and its connection closed).
fn refuse_banned(shared: &Shared, client: &Client) -> Result<(), Refuse> {
    match shared.guard.banned(client.addr.ip().to_canonical()) {
        Some(left) => Err(Refuse {
            close: true,
            retry_after: Some(left.as_secs().max(1)),
            ..refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                "source banned (brute force)",
            )
        }),
        None => Ok(()),
    }
}

/// Who: one `Authorization` header and/or a client certificate still valid,
/// then where and when the identity may connect from.
async fn authenticate(
    parts: &http::request::Parts,
    shared: &Shared,
    rt: &Runtime,
    client: &Client,
    record: &mut Record,
) -> Result<Arc<Identity>, Refuse> {
    let mut authz = parts.headers.get_all(header::AUTHORIZATION).iter();
    let (first, second) = (authz.next(), authz.next());
    if second.is_some() {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "several Authorization headers",
        ));
    }
    let now_unix = (record.time_ms / 1000) as i64;
    let cert_names: &[String] = match client.cert_not_after {
        Some(t) if now_unix > t => &[],
        _ => &client.cert_names,
    };
    let source = client.addr.ip().to_canonical();
    let id = rt
        .auth
        .authenticate(
            first.map(HeaderValue::as_bytes),
            cert_names,
            now_unix,
            source,
        )
        .await
        .map_err(|f| auth_refusal(f, shared, client, first))?;
    record.identity = Some(id.name.clone());
    // A client certificate near its end is noted on its requests.
    if let Some(t) = client.cert_not_after
        && t - now_unix < CLIENT_CERT_NOTE_DAYS * 86_400
    {
        record.client_cert_days_left = Some((t - now_unix).div_euclid(86_400));
    }
    client.activity.set_authenticated();
    Limiter::check_where_and_when(&id, client.addr.ip(), now_unix)
        .map_err(|r| refuse(StatusCode::FORBIDDEN, "forbidden", r.as_str()))?;
    Ok(id)
}

fn auth_refusal(
    f: AuthFailure,
    shared: &Shared,
    client: &Client,
    authz: Option<&HeaderValue>,
) -> Refuse {
    match f {
        AuthFailure::Busy => Refuse {
            retry_after: Some(1),
            ..refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests",
                f.as_str(),
            )
        },
        // Asking without credentials is how clients learn the scheme; a
        // wrong credential counts towards a ban.
        AuthFailure::Missing => refuse(StatusCode::UNAUTHORIZED, "unauthorized", f.as_str()),
        _ => {
            let banned = failed_authentication(shared, client, authz);
            Refuse {
                close: banned,
                ..refuse(StatusCode::UNAUTHORIZED, "unauthorized", f.as_str())
            }
        }
    }
}

/// What: the route, whether the identity may call it, and the model its path
/// names (a model named in the body is judged once the body is read).
fn authorize(
    parts: &http::request::Parts,
    canonical: &canon::Canonical,
    id: &Identity,
    record: &mut Record,
) -> Result<&'static routes::Route, Refuse> {
    let (route, params) =
        routes::find(parts.method.as_str(), &canonical.path).map_err(|e| match e {
            NoRoute::UnknownPath => refuse(StatusCode::NOT_FOUND, "not found", "no such route"),
            NoRoute::Method => refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                "method not allowed on this route",
            ),
        })?;
    match route.group {
        Group::ModelAdmin | Group::Account if !id.admin => {
            return Err(refuse(StatusCode::FORBIDDEN, "forbidden", "admin route"));
        }
        Group::Inference if route.model == ModelIn::Multipart && !id.admin && !id.all_models() => {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                "multipart bodies are not read: this route needs models = [\"*\"]",
            ));
        }
        _ => {}
    }
    if let Some(m) = params.first().filter(|_| route.model == ModelIn::Path) {
        allowed_model(id, m, record)?;
    }
    Ok(route)
}

fn limit_refusal(r: Refusal) -> Refuse {
    let retry_after = match r {
        Refusal::Rate(wait) => Some(wait.as_secs_f64().ceil() as u64),
        _ => None,
    };
    Refuse {
        retry_after,
        ..refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
            r.as_str(),
        )
    }
}

/// The request body as it will be forwarded.
struct JudgedBody {
    body: upstream::ReqBody,
    /// Bytes of a streamed upload sent so far (bodies read whole: `None`).
    uploaded: Option<Arc<AtomicU64>>,
    /// Why a streamed upload stopped, when it did.
    upload_failure: Option<Arc<std::sync::OnceLock<&'static str>>>,
    /// The share of the body budget a body read whole holds until it is sent.
    budget: Option<Reservation>,
}

/// The body: read whole and judged when it names the model (within the
/// shared budget), streamed with its own limits otherwise.
#[allow(clippy::too_many_arguments)]
async fn judged_body(
    parts: &http::request::Parts,
    body_slot: &mut Option<Incoming>,
    route: &'static routes::Route,
    id: &Arc<Identity>,
    shared: &Shared,
    rt: &Runtime,
    client: &Client,
    record: &mut Record,
) -> Result<JudgedBody, Refuse> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > id.max_body) {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            "request body too large",
        ));
    }
    let incoming = body_slot.take().expect("body not taken yet");
    let limits = &rt.cfg.limits;
    if route.model != ModelIn::Body {
        let up = Upload::new(incoming, id.max_body, limits.body_timeout);
        return Ok(JudgedBody {
            uploaded: Some(up.count.clone()),
            upload_failure: Some(up.failure.clone()),
            body: up.boxed(),
            budget: None,
        });
    }
    // Bodies read whole share one memory budget (with a share per identity
    // and per source): a declared length is reserved up front, a stream as it
    // arrives.
    let cap = id.max_body.min(limits.max_buffered);
    let mut held = shared
        .body_budget
        .reservation(&id.name, client.addr.ip().to_canonical());
    if let Some(n) = declared {
        held.cover(n.min(cap)).map_err(|e| Refuse {
            retry_after: Some(1),
            ..refuse(StatusCode::SERVICE_UNAVAILABLE, "busy", e.as_str())
        })?;
    }
    let bytes = read_all(incoming, cap, limits.body_timeout, &mut held)
        .await
        .map_err(body_refusal)?;
    record.bytes_in = bytes.len() as u64;
    let (digest, inspected, texts) = inspect_body(bytes, route, id, &rt.cfg).await?;
    record.body_sha256 = digest;
    let inspected = inspected.map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid request body",
            e.to_string(),
        )
    })?;
    if let Some(m) = &inspected.model {
        allowed_model(id, m, record)?;
        allowed_registry(route, id, &rt.cfg, m)?;
    }
    judge_content(&texts, id, &rt.cfg, shared, client, record)?;
    Ok(JudgedBody {
        body: full_req(inspected.body),
        uploaded: None,
        upload_failure: None,
        budget: Some(held),
    })
}

/// The prompt's length and the content rules: refused (413, 403) or
/// forwarded, flagging rules named in the record and raised as findings. The
/// text itself is never recorded.
fn judge_content(
    texts: &[String],
    id: &Identity,
    cfg: &Config,
    shared: &Shared,
    client: &Client,
    record: &mut Record,
) -> Result<(), Refuse> {
    use crate::content::{Verdict, judge};
    if id.max_prompt_chars.is_none() && cfg.content_rules.is_empty() {
        return Ok(());
    }
    let finding = |rule: &str, action: &str| {
        shared
            .audit
            .finding(content_finding(rule, action, id, client, record));
    };
    match judge(texts, id.max_prompt_chars, &cfg.content_rules) {
        Verdict::Pass(flags) => {
            for f in &flags {
                finding(f, "flag");
            }
            record.content_flags = flags;
            Ok(())
        }
        Verdict::TooLong { max, .. } => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "prompt too long",
            format!("prompt longer than {max} characters"),
        )),
        Verdict::Refused(rule) => {
            finding(&rule, "refuse");
            Err(refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("content rule {rule}"),
            ))
        }
    }
}

/// A content rule's match as an OCSF Detection Finding: the rule, the
/// identity, the request; never the text.
fn content_finding(rule: &str, action: &str, id: &Identity, client: &Client, r: &Record) -> Value {
    let now = super::audit::now_ms();
    json!({
        "class_uid": 2004, "class_name": "Detection Finding", "category_uid": 2,
        "category_name": "Findings", "activity_id": 1, "activity_name": "Create",
        "type_uid": 200401, "type_name": "Detection Finding: Create",
        "severity_id": if action == "refuse" { 3 } else { 2 },
        "time": now,
        "message": format!("content rule {rule} matched ({action})"),
        "finding_info": {
            "uid": format!("{}-{rule}", r.request_id),
            "title": format!("content rule {rule} matched"),
            "types": ["Content Rule"],
            "related_events": [{ "uid": r.request_id }],
        },
        "actor": { "user": { "name": id.name } },
        "src_endpoint": { "ip": client.addr.ip().to_canonical().to_string(), "port": client.addr.port() },
        "metadata": {
            "version": warden_events::ocsf::OCSF_VERSION,
            "profiles": ["security_control"],
            "product": { "name": "ollama-warden", "vendor_name": "ollama-warden", "version": env!("CARGO_PKG_VERSION") },
        },
        "action_id": if action == "refuse" { 2 } else { 1 },
        "disposition_id": if action == "refuse" { 2 } else { 15 },
        "unmapped": { "warden": { "content_rule": rule, "action": action, "request_id": r.request_id } },
    })
}

/// The body's digest (when audited), what it names, read the way Go's
/// decoder reads it, and its prompt text when a content check needs it. A
/// large body is scanned and hashed off the async workers, so it never
/// stalls other requests.
async fn inspect_body(
    bytes: Bytes,
    route: &'static routes::Route,
    id: &Arc<Identity>,
    cfg: &Config,
) -> Result<InspectedBody, Refuse> {
    let cap = if id.admin { None } else { id.max_tokens };
    let sha = cfg.audit_body_sha256;
    let who = id.clone();
    let texts_wanted = id.max_prompt_chars.is_some() || !cfg.content_rules.is_empty();
    let large = bytes.len() as u64 > INLINE_BODY;
    let work = move || {
        let digest = sha.then(|| {
            let d = Sha256::digest(&bytes);
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        });
        let may_use = |m: &str| ModelName::parse(m).is_some_and(|n| who.may_run(&n));
        let inspected = body::inspect(route, &bytes, cap, may_use);
        let texts = match &inspected {
            Ok(i) if texts_wanted => body::prompt_texts(&i.body),
            _ => Vec::new(),
        };
        (digest, inspected, texts)
    };
    if !large {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await.map_err(|_| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "try again",
            "body check failed",
        )
    })
}

/// A body's digest, what it names, and its prompt text.
type InspectedBody = (
    Option<String>,
    Result<body::Inspected, body::BodyError>,
    Vec<String>,
);

/// Forwards exactly what was judged, reporting the upstream socket to the
/// daemon as it connects. A streamed upload (blobs) may take long; its pace
/// is bounded by the body timeout instead of the upstream timeout.
#[allow(clippy::too_many_arguments)]
async fn forward(
    parts: &http::request::Parts,
    canonical: &canon::Canonical,
    body: JudgedBody,
    id: &Identity,
    shared: &Shared,
    rt: &Runtime,
    client: &Client,
    fin: &mut Finish,
) -> Result<upstream::Sent, Refuse> {
    let cfg = &rt.cfg;
    let upstream_req = build_upstream(parts, &canonical.target(), body.body, cfg)?;
    let head_timeout = body
        .upload_failure
        .is_none()
        .then_some(cfg.limits.upstream_timeout);
    let report = shared.reporter.as_ref().map(|rep| {
        let r = fin.record();
        (rep, r.request_id.clone(), id.name.clone(), r.model.clone())
    });
    let on_connect = |c: &super::audit::UpstreamConn| {
        if let Some((rep, request_id, identity, model)) = report.filter(|_| c.cookie != 0) {
            rep.report(ProxyReport {
                cookie: c.cookie,
                request_id,
                identity,
                model,
                client: client.addr,
                listener: client.local,
                local: c.local,
                upstream: c.addr,
                time_ms: now_ms(),
            });
        }
    };
    let target = upstream::Target {
        addr: cfg.upstream.addr,
        identity: &id.name,
        pool: &shared.upstream_pool,
        keepalive: cfg.upstream_keepalive,
    };
    let sent = upstream::send(target, upstream_req, head_timeout, on_connect)
        .await
        .map_err(
            |e| match body.upload_failure.as_ref().and_then(|f| f.get()) {
                Some(why) => body_refusal(why),
                None => refuse(
                    StatusCode::BAD_GATEWAY,
                    "upstream unavailable",
                    e.to_string(),
                ),
            },
        )?;
    drop(body.budget);
    Ok(sent)
}

/// A listing with only the models the identity may use.
fn filtered_listing(
    path: &str,
    listing: Result<Value, String>,
    id: &Identity,
) -> Result<Vec<u8>, Refuse> {
    let listing = listing
        .map_err(|why| refuse(StatusCode::BAD_GATEWAY, "upstream listing unreadable", why))?;
    Ok(filter_listing(path, listing, |m| {
        ModelName::parse(m).is_some_and(|n| id.may_run(&n))
    }))
}

/// Counts a failed authentication; reports what it raised (a finding in the
/// audit, a ban handed to the daemon). True if the source is now banned.
fn failed_authentication(shared: &Shared, client: &Client, authz: Option<&HeaderValue>) -> bool {
    let source = client.addr.ip().to_canonical();
    let claimed = authz.and_then(|v| claimed_user(v.as_bytes()));
    let mut banned = false;
    for alert in shared.guard.failed(source, claimed.as_deref()) {
        shared
            .audit
            .finding(super::guard::finding(&alert, client.local));
        if let super::guard::Alert::Source {
            ban,
            failures,
            window,
            claimed,
            ..
        } = &alert
            && !ban.is_zero()
        {
            banned = true;
            if let Some(r) = &shared.reporter {
                r.ban(warden_events::reports::BanRequest {
                    ban: source,
                    seconds: ban.as_secs(),
                    port: client.local.port(),
                    failures: *failures,
                    window_seconds: window.as_secs(),
                    identity: claimed.clone(),
                });
            }
        }
    }
    banned
}

/// The user a basic-auth header names (at most 64 characters), for counting.
fn claimed_user(header: &[u8]) -> Option<String> {
    use base64::Engine;
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let user = text.split_once(':')?.0;
    (!user.is_empty()).then(|| user.chars().take(64).collect())
}

/// Records the canonical name of the model a request names, and refuses it
/// unless the identity may use it.
fn allowed_model(
    id: &super::config::Identity,
    raw: &str,
    record: &mut Record,
) -> Result<(), Refuse> {
    let name = ModelName::parse(raw).ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "not a model name",
            "not a model name",
        )
    })?;
    record.model = Some(name.to_string());
    if !id.may_run(&name) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "model not allowed",
            "model not allowed",
        ));
    }
    Ok(())
}

/// A pull comes only from, and a push goes only to, the registries and
/// namespaces `pull_from` allows (the identity's, else the global list).
fn allowed_registry(
    route: &routes::Route,
    id: &Identity,
    cfg: &Config,
    raw: &str,
) -> Result<(), Refuse> {
    if !matches!(route.pattern, "/api/pull" | "/api/push") {
        return Ok(());
    }
    match ModelName::parse(raw) {
        Some(name) if !id.may_reach_registry(&cfg.pull_from, &name) => Err(refuse(
            StatusCode::FORBIDDEN,
            "registry not allowed",
            format!("{} is not in pull_from", name.qualified()),
        )),
        _ => Ok(()),
    }
}

fn body_refusal(why: &'static str) -> Refuse {
    match why {
        relay::TOO_LARGE => refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large", why),
        relay::TIMED_OUT => Refuse {
            close: true,
            ..refuse(StatusCode::REQUEST_TIMEOUT, "request body timed out", why)
        },
        _ => Refuse {
            close: true,
            ..refuse(StatusCode::BAD_REQUEST, "request body broken off", why)
        },
    }
}

/// Reads up to 64 KiB of an unread request body, for at most a second.
async fn drain(body: Incoming) {
    let limited = http_body_util::Limited::new(body, 64 << 10);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), limited.collect()).await;
}

fn full_req(body: Vec<u8>) -> upstream::ReqBody {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed()
}

/// Request headers forwarded upstream: only what Ollama reads. Credentials,
/// hop-by-hop headers, client-supplied forwarding headers and everything else
/// stay behind; Host is the upstream's own authority.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
];

fn build_upstream(
    parts: &http::request::Parts,
    target: &str,
    body: upstream::ReqBody,
    cfg: &Config,
) -> Result<Request<upstream::ReqBody>, Refuse> {
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .version(Version::HTTP_11)
        .body(body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad request", e.to_string()))?;
    let h = req.headers_mut();
    for name in FORWARDED_REQUEST_HEADERS {
        for v in parts.headers.get_all(*name) {
            h.append(HeaderName::from_static(name), v.clone());
        }
    }
    h.insert(
        header::HOST,
        HeaderValue::from_str(&cfg.upstream.host)
            .map_err(|_| refuse(StatusCode::BAD_GATEWAY, "bad upstream", "bad upstream host"))?,
    );
    Ok(req)
}

/// Response headers not passed back: hop-by-hop, server identification and
/// (unless configured) CORS.
fn clean_response_headers(h: &mut HeaderMap, pass_cors: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .map(str::trim)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "server",
        "x-powered-by",
    ] {
        h.remove(n);
    }
    if !pass_cors {
        let cors: Vec<HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for n in cors {
            h.remove(n);
        }
        h.remove(header::VARY);
    }
}

async fn read_listing(body: Incoming, cfg: &Config) -> Result<Value, String> {
    let read = async {
        let limited = http_body_util::Limited::new(body, MAX_LISTING as usize);
        limited
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string())
    };
    let bytes = tokio::time::timeout(cfg.limits.upstream_timeout, read)
        .await
        .map_err(|_| "upstream timed out".to_string())??;
    serde_json::from_slice(&bytes).map_err(|e| format!("listing is not JSON: {e}"))
}

/// Keeps the entries of a model listing the identity may use: `/api/tags` and
/// `/api/ps` (`models[].name`/`model`), `/v1/models` (`data[].id`).
pub fn filter_listing(path: &str, mut listing: Value, allowed: impl Fn(&str) -> bool) -> Vec<u8> {
    let (key, fields): (&str, &[&str]) = if path == "/v1/models" {
        ("data", &["id"])
    } else {
        ("models", &["name", "model"])
    };
    if let Some(items) = listing.get_mut(key).and_then(Value::as_array_mut) {
        items.retain(|item| {
            let names: Vec<&str> = fields
                .iter()
                .filter_map(|f| item.get(*f).and_then(Value::as_str))
                .collect();
            !names.is_empty() && names.iter().all(|n| allowed(n))
        });
    }
    serde_json::to_vec(&listing).expect("a JSON value serialises")
}
