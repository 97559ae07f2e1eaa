//! The routes the proxy forwards: Ollama's own (server/routes.go), grouped by
//! what they let a caller do. Anything not in the table is refused.
//!
//! Matching is exact and case-sensitive on the canonical path (see
//! [`super::canon`]), like Ollama's router.

/// What a route lets a caller do, which decides who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Liveness and version: any authenticated identity.
    Health,
    /// Model listings: any identity, filtered to the models it may use.
    List,
    /// Reads one model's details: an identity allowed that model.
    Read,
    /// Generation and embeddings: an identity allowed that model.
    Inference,
    /// Pull, push, create, copy, delete, blobs: admin identities only.
    ModelAdmin,
    /// Account and cloud routes: admin identities only.
    Account,
}

impl Group {
    /// The group's name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Group::Health => "health",
            Group::List => "list",
            Group::Read => "read",
            Group::Inference => "inference",
            Group::ModelAdmin => "model_admin",
            Group::Account => "account",
        }
    }
}

/// Where the model a request is about is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelIn {
    None,
    /// The JSON body's `model` (native routes also accept the older `name`).
    Body,
    /// The last path segment (`/v1/models/:model`).
    Path,
    /// A `model` field of a multipart form (`/v1/audio/transcriptions`).
    Multipart,
}

/// The API dialect, which decides the generation-length fields and the stream framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `/api/*`: NDJSON streams, `options.num_predict`.
    Native,
    /// `/v1/*` (OpenAI): SSE streams, `max_tokens` / `max_completion_tokens` / `max_output_tokens`.
    OpenAi,
    /// `/v1/messages` (Anthropic): SSE streams, `max_tokens`.
    Anthropic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub methods: &'static [&'static str],
    /// Segments; `:name` matches one segment.
    pub pattern: &'static str,
    pub group: Group,
    pub model: ModelIn,
    pub dialect: Dialect,
}

const fn r(
    methods: &'static [&'static str],
    pattern: &'static str,
    group: Group,
    model: ModelIn,
    dialect: Dialect,
) -> Route {
    Route {
        methods,
        pattern,
        group,
        model,
        dialect,
    }
}

use Dialect::*;
use Group::*;
use ModelIn::{Body, Multipart, Path as InPath};

const GET: &[&str] = &["GET", "HEAD"];
const POST: &[&str] = &["POST"];
const NONE: ModelIn = ModelIn::None;

/// Ollama's routes (server/routes.go, GenerateRoutes).
pub const ROUTES: &[Route] = &[
    r(GET, "/", Health, NONE, Native),
    r(GET, "/api/version", Health, NONE, Native),
    r(&["GET"], "/api/status", Health, NONE, Native),
    r(GET, "/api/tags", List, NONE, Native),
    r(&["GET"], "/api/ps", List, NONE, Native),
    r(POST, "/api/show", Read, Body, Native),
    r(POST, "/api/generate", Inference, Body, Native),
    r(POST, "/api/chat", Inference, Body, Native),
    r(POST, "/api/embed", Inference, Body, Native),
    r(POST, "/api/embeddings", Inference, Body, Native),
    r(POST, "/v1/chat/completions", Inference, Body, OpenAi),
    r(POST, "/v1/completions", Inference, Body, OpenAi),
    r(POST, "/v1/embeddings", Inference, Body, OpenAi),
    r(POST, "/v1/responses", Inference, Body, OpenAi),
    r(
        POST,
        "/v1/audio/transcriptions",
        Inference,
        Multipart,
        OpenAi,
    ),
    r(&["GET"], "/v1/models", List, NONE, OpenAi),
    r(&["GET"], "/v1/models/:model", Read, InPath, OpenAi),
    r(POST, "/v1/messages", Inference, Body, Anthropic),
    r(POST, "/api/pull", ModelAdmin, Body, Native),
    r(POST, "/api/push", ModelAdmin, Body, Native),
    r(POST, "/api/create", ModelAdmin, Body, Native),
    r(POST, "/api/copy", ModelAdmin, NONE, Native),
    r(&["DELETE"], "/api/delete", ModelAdmin, Body, Native),
    r(
        &["POST", "HEAD"],
        "/api/blobs/:digest",
        ModelAdmin,
        NONE,
        Native,
    ),
    r(POST, "/api/me", Account, NONE, Native),
    r(POST, "/api/signout", Account, NONE, Native),
    r(&["DELETE"], "/api/user/keys/:key", Account, NONE, Native),
    r(POST, "/api/experimental/web_search", Account, NONE, Native),
    r(POST, "/api/experimental/web_fetch", Account, NONE, Native),
    r(
        &["GET"],
        "/api/experimental/model-recommendations",
        Account,
        NONE,
        Native,
    ),
];

/// Why a request has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No route has this path (404).
    UnknownPath,
    /// The path exists, not with this method (405).
    Method,
}

/// The route of a canonical path; `params` gets the `:name` segments.
pub fn find<'p>(method: &str, path: &'p str) -> Result<(&'static Route, Vec<&'p str>), NoRoute> {
    let mut path_known = false;
    for route in ROUTES {
        if let Some(params) = matches(route.pattern, path) {
            if route.methods.contains(&method) {
                return Ok((route, params));
            }
            path_known = true;
        }
    }
    Err(if path_known {
        NoRoute::Method
    } else {
        NoRoute::UnknownPath
    })
}

fn matches<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    if pattern == "/" {
        return (path == "/").then(Vec::new);
    }
    let mut params = Vec::new();
    let mut want = pattern[1..].split('/');
    let mut have = path.strip_prefix('/')?.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(h)) if w.starts_with(':') && !h.is_empty() => params.push(h),
            (Some(w), Some(h)) if w == h => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_by_exact_path_and_method() {
        let (r, p) = find("POST", "/api/chat").unwrap();
        assert_eq!((r.group, r.model, p.len()), (Inference, Body, 0));
        let (r, p) = find("GET", "/v1/models/llama3:8b").unwrap();
        assert_eq!((r.group, r.model, p), (Read, InPath, vec!["llama3:8b"]));
        let (r, p) = find("HEAD", "/api/blobs/sha256:abc").unwrap();
        assert_eq!((r.group, p), (ModelAdmin, vec!["sha256:abc"]));
        assert_eq!(find("GET", "/").unwrap().0.group, Health);
        assert_eq!(find("POST", "/v1/messages").unwrap().0.dialect, Anthropic);
    }

    #[test]
    fn everything_else_is_refused() {
        for (m, p, why) in [
            ("GET", "/api/pull", NoRoute::Method),
            ("POST", "/api/tags", NoRoute::Method),
            ("GET", "/api/delete", NoRoute::Method),
            ("POST", "/API/PULL", NoRoute::UnknownPath),
            ("POST", "/api/pull/x", NoRoute::UnknownPath),
            ("POST", "/api", NoRoute::UnknownPath),
            ("GET", "/debug/pprof", NoRoute::UnknownPath),
            ("POST", "/api/blobs", NoRoute::UnknownPath),
            ("POST", "/v1/models/a/b", NoRoute::UnknownPath),
            ("OPTIONS", "/api/chat", NoRoute::Method),
            ("TRACE", "/", NoRoute::Method),
        ] {
            assert_eq!(find(m, p).unwrap_err(), why, "{m} {p}");
        }
    }

    #[test]
    fn admin_and_account_routes_are_the_documented_ones() {
        let admin: Vec<_> = ROUTES
            .iter()
            .filter(|r| matches!(r.group, ModelAdmin | Account))
            .map(|r| r.pattern)
            .collect();
        for p in [
            "/api/pull",
            "/api/push",
            "/api/create",
            "/api/copy",
            "/api/delete",
            "/api/blobs/:digest",
            "/api/me",
            "/api/signout",
            "/api/user/keys/:key",
            "/api/experimental/web_search",
            "/api/experimental/web_fetch",
            "/api/experimental/model-recommendations",
        ] {
            assert!(admin.contains(&p), "{p}");
        }
        assert_eq!(admin.len(), 12);
    }
}
