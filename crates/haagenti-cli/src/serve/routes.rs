//! The request paths the Hub's clients use, parsed from the raw (percent-encoded) path,
//! and what each answers.
//!
//! Every path segment is decoded once and must be a plain name: never empty, `.` or `..`,
//! no decoded `/` or `\` (an encoded slash could otherwise smuggle a path through one
//! segment), no control characters. File paths are only ever looked up in a manifest, never
//! joined to a directory, so these checks are a second wall, not the only one.

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::json;

use super::State;
use super::body::ResponseBody;
use super::catalog::{Generation, Model};
use super::error::HubError;
use super::range::{self, RangeRequest};
use super::time;

/// Longest request target (path and query) served; longer ones get 414.
pub const MAX_URI: usize = 4096;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    ListModels,
    /// `/`: the family map (`haagenti report`'s page).
    Report,
    /// `/api/report`: the page's data as JSON.
    ReportJson,
    /// `/api/models/{repo}` (revision `main`) and `/api/models/{repo}/revision/{rev}`.
    Info {
        repo: String,
        revision: String,
    },
    /// `/api/models/{repo}/tree/{rev}[/{path}]`.
    Tree {
        repo: String,
        revision: String,
        path: String,
    },
    /// `/{repo}/resolve/{rev}/{path}`.
    Resolve {
        repo: String,
        revision: String,
        path: String,
    },
    /// A dataset or space: not served, but answered as the client expects.
    OtherRepoType,
}

/// Parses a request path (without the query).
pub fn parse(path: &str) -> Result<Route, HubError> {
    let rest = path
        .strip_prefix('/')
        .ok_or(HubError::BadRequest("the path must start with /"))?;
    if rest.is_empty() {
        return Ok(Route::Report);
    }
    let raw: Vec<&str> = rest.split('/').collect();
    if raw.iter().any(|s| s.is_empty()) {
        return Err(HubError::BadRequest("empty path segment"));
    }
    match raw.as_slice() {
        ["health"] => return Ok(Route::Health),
        ["api", "models"] => return Ok(Route::ListModels),
        ["api", "report"] => return Ok(Route::ReportJson),
        ["api", "datasets" | "spaces", ..] => return Ok(Route::OtherRepoType),
        _ => {}
    }
    if let ["api", "models", tail @ ..] = raw.as_slice() {
        return parse_api(tail);
    }
    if let ["datasets" | "spaces", _, _, "resolve", ..] = raw.as_slice() {
        return Ok(Route::OtherRepoType);
    }
    // `/{org}/{name}/resolve/...` first: a bare `name` cannot have `resolve` as its
    // revision (only `main` and commit ids exist).
    let at = if raw.len() >= 5 && raw[2] == "resolve" {
        2
    } else if raw.len() >= 4 && raw[1] == "resolve" {
        1
    } else {
        return Err(HubError::NotFound);
    };
    let repo = repo_id(&raw[..at])?;
    let revision = segment(raw[at + 1])?;
    let path = file_path(&raw[at + 2..])?;
    Ok(Route::Resolve {
        repo,
        revision,
        path,
    })
}

/// `{repo}[/revision/{rev}]` or `{repo}/tree/{rev}[/{path}]`, with `repo` one or two
/// segments: two when the rest then parses, else one.
fn parse_api(tail: &[&str]) -> Result<Route, HubError> {
    for at in [2, 1] {
        if tail.len() < at {
            continue;
        }
        let (repo, rest) = tail.split_at(at);
        let route = match rest {
            [] => Some(("", None)),
            ["revision", rev] => Some((*rev, None)),
            ["tree", rev, path @ ..] => Some((*rev, Some(path))),
            _ => None,
        };
        let Some((rev, tree)) = route else { continue };
        let repo = repo_id(repo)?;
        let revision = if rev.is_empty() {
            "main".to_string()
        } else {
            // The client quotes the revision with `safe=""`: `refs/pr/1` arrives as one
            // segment. It only has to match a stored revision, so any text is fine here.
            decode(rev)?
        };
        return Ok(match tree {
            None => Route::Info { repo, revision },
            Some(path) => Route::Tree {
                repo,
                revision,
                path: tree_path(path)?,
            },
        });
    }
    Err(HubError::NotFound)
}

fn repo_id(raw: &[&str]) -> Result<String, HubError> {
    let parts = raw
        .iter()
        .map(|s| segment(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(parts.join("/"))
}

/// A file path of at least one segment, each a plain name.
fn file_path(raw: &[&str]) -> Result<String, HubError> {
    if raw.is_empty() {
        return Err(HubError::BadRequest("no file path"));
    }
    Ok(raw
        .iter()
        .map(|s| segment(s))
        .collect::<Result<Vec<_>, _>>()?
        .join("/"))
}

/// A tree path: the client quotes it with `safe=""`, so its slashes may arrive encoded;
/// the decoded path is then checked segment by segment.
fn tree_path(raw: &[&str]) -> Result<String, HubError> {
    let mut segments = Vec::new();
    for r in raw {
        for s in decode(r)?.split('/') {
            check_segment(s)?;
            segments.push(s.to_string());
        }
    }
    Ok(segments.join("/"))
}

/// One decoded path segment that must not contain a slash.
fn segment(raw: &str) -> Result<String, HubError> {
    let s = decode(raw)?;
    if s.contains('/') {
        return Err(HubError::BadRequest("encoded slash in a path segment"));
    }
    check_segment(&s)?;
    Ok(s)
}

fn check_segment(s: &str) -> Result<(), HubError> {
    if s.is_empty() {
        return Err(HubError::BadRequest("empty path segment"));
    }
    if s == "." || s == ".." {
        return Err(HubError::BadRequest("relative path segment"));
    }
    if s.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(HubError::BadRequest("invalid character in the path"));
    }
    Ok(())
}

/// Percent-decoding to UTF-8; a malformed escape or invalid UTF-8 is a bad request.
fn decode(raw: &str) -> Result<String, HubError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(HubError::BadRequest("malformed percent-encoding"));
            };
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| HubError::BadRequest("the path is not UTF-8"))
}

/// Answers a parsed request.
pub async fn answer(
    state: &State,
    method: &Method,
    route: Route,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, HubError> {
    let head = *method == Method::HEAD;
    match route {
        Route::Health => Ok(json_response(
            head,
            StatusCode::OK,
            &json!({"status": "ok"}),
        )),
        Route::OtherRepoType => Err(HubError::RepoNotFound),
        Route::Report | Route::ReportJson => {
            let report = state.catalog.report().await?;
            let (body, content_type) = if route == Route::Report {
                (report.html.clone(), "text/html; charset=utf-8")
            } else {
                (report.json.clone(), "application/json")
            };
            let len = body.len();
            let mut response = Response::new(if head {
                ResponseBody::empty()
            } else {
                ResponseBody::full(body)
            });
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            Ok(response)
        }
        Route::ListModels => {
            let names = state.catalog.names().await?;
            let list: Vec<_> = names
                .iter()
                .map(|n| json!({"_id": n, "id": n, "modelId": n, "private": false}))
                .collect();
            Ok(json_response(head, StatusCode::OK, &json!(list)))
        }
        Route::Info { repo, revision } => {
            let model = state.catalog.model(&repo).await?;
            let generation = model.resolve(&revision)?;
            Ok(json_response(
                head,
                StatusCode::OK,
                &info_json(&repo, &model, &generation),
            ))
        }
        Route::Tree {
            repo,
            revision,
            path,
        } => {
            let model = state.catalog.model(&repo).await?;
            let generation = model.resolve(&revision)?;
            let recursive = query_flag(query, "recursive");
            let entries = tree_json(&generation, &path, recursive).ok_or_else(|| {
                HubError::EntryNotFound {
                    revision: generation.revision.clone(),
                }
            })?;
            Ok(json_response(head, StatusCode::OK, &entries))
        }
        Route::Resolve {
            repo,
            revision,
            path,
        } => {
            let model = state.catalog.model(&repo).await?;
            let generation = model.resolve(&revision)?;
            resolve(state, head, &generation, &path, headers)
        }
    }
}

fn info_json(repo: &str, model: &Model, g: &Generation) -> serde_json::Value {
    let files = g.handle.files();
    let siblings: Vec<_> = files
        .iter()
        .map(|f| json!({"rfilename": f.path, "size": f.size, "blobId": etag_value(g, f)}))
        .collect();
    json!({
        "_id": g.revision,
        "id": repo,
        "modelId": repo,
        "author": repo.split_once('/').map(|(org, _)| org),
        "sha": g.revision,
        "lastModified": time::iso8601(g.created_unix_ms),
        "createdAt": time::iso8601(model.first_created_unix_ms()),
        "private": false,
        "gated": false,
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": files.iter().map(|f| f.size).sum::<u64>(),
    })
}

/// The Hub's tree listing of `dir` ("" is the root): its files and directories, or every
/// file and directory below it when `recursive`. `None` when `dir` is no directory.
fn tree_json(g: &Generation, dir: &str, recursive: bool) -> Option<serde_json::Value> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut dirs = std::collections::BTreeSet::new();
    let mut files = Vec::new();
    for f in g.handle.files() {
        let Some(rel) = f.path.strip_prefix(&prefix) else {
            continue;
        };
        // Directories between `dir` and the file.
        let parts: Vec<&str> = rel.split('/').collect();
        let depth = if recursive { parts.len() - 1 } else { 1 };
        for i in 1..=depth.min(parts.len() - 1) {
            dirs.insert(format!("{prefix}{}", parts[..i].join("/")));
        }
        if recursive || parts.len() == 1 {
            files.push(f);
        }
    }
    if files.is_empty() && dirs.is_empty() && !dir.is_empty() {
        return None;
    }
    let mut out: Vec<serde_json::Value> = dirs
        .iter()
        .map(|d| {
            let oid = blake3::hash(format!("tree\0{}\0{d}", g.revision).as_bytes());
            json!({"type": "directory", "oid": &oid.to_hex()[..40], "size": 0, "path": d})
        })
        .collect();
    out.extend(
        files.iter().map(
            |f| json!({"type": "file", "oid": etag_value(g, f), "size": f.size, "path": f.path}),
        ),
    );
    Some(serde_json::Value::Array(out))
}

fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        k == name && matches!(v, "true" | "True" | "1")
    })
}

/// The file's entity tag: the BLAKE3 of its bytes (hex). A lossy file's stored bytes are
/// not the ingested ones its BLAKE3 describes, so it gets a tag of its own per generation.
fn etag_value(g: &Generation, f: &haagenti_core::ModelFile) -> String {
    if f.lossy {
        let mut h = blake3::Hasher::new();
        h.update(b"haagenti-lossy\0");
        h.update(&f.blake3);
        h.update(g.revision.as_bytes());
        h.finalize().to_hex().to_string()
    } else {
        blake3::Hash::from_bytes(f.blake3).to_hex().to_string()
    }
}

/// `HEAD`/`GET` of one file: 200, 206, 304 or 416.
fn resolve(
    state: &State,
    head: bool,
    g: &Generation,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, HubError> {
    let not_found = || HubError::EntryNotFound {
        revision: g.revision.clone(),
    };
    let file = g
        .handle
        .files()
        .iter()
        .find(|f| f.path == path)
        .ok_or_else(not_found)?;
    let reader = g.handle.file(path).map_err(|_| not_found())?;
    let etag = format!("\"{}\"", etag_value(g, file));
    let size = file.size;

    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header("x-repo-commit", &g.revision)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::LAST_MODIFIED, time::http_date(g.created_unix_ms));

    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        if etag_matches(inm.as_bytes(), &etag) {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(ResponseBody::empty())
                .map_err(internal);
        }
    }
    let range = match headers.get(header::RANGE) {
        // `If-Range` with another tag (or a date): the client's copy is stale, send it all.
        Some(_)
            if headers
                .get(header::IF_RANGE)
                .is_some_and(|v| v.as_bytes() != etag.as_bytes()) =>
        {
            RangeRequest::Full
        }
        Some(r) => range::parse(r.as_bytes(), size),
        None => RangeRequest::Full,
    };
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start)
        }
        RangeRequest::Unsatisfiable => {
            let body = json!({"error": "Requested range not satisfiable"}).to_string();
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len())
                .body(if head {
                    ResponseBody::empty()
                } else {
                    ResponseBody::full(body)
                })
                .map_err(internal);
        }
    };
    let body = if head || len == 0 {
        ResponseBody::empty()
    } else {
        ResponseBody::file(reader, start, len, state.gate.clone())
    };
    builder
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(internal)
}

/// `If-None-Match`: `*` or a list of (possibly weak) tags, compared weakly (RFC 9110).
fn etag_matches(value: &[u8], etag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn internal(e: impl std::fmt::Display) -> HubError {
    HubError::Internal(e.to_string())
}

fn json_response(
    head: bool,
    status: StatusCode,
    value: &serde_json::Value,
) -> Response<ResponseBody> {
    let body = Bytes::from(value.to_string());
    let mut response = Response::new(if head {
        ResponseBody::empty()
    } else {
        ResponseBody::full(body.clone())
    });
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// The Hub-style response for `e`.
pub fn error_response(head: bool, e: &HubError) -> Response<ResponseBody> {
    let message = e.to_string();
    let mut response = json_response(head, e.status(), &json!({"error": message}));
    let h = response.headers_mut();
    if let Some(code) = e.code() {
        h.insert("x-error-code", HeaderValue::from_static(code));
    }
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("x-error-message", v);
    }
    if let Some(rev) = e.revision().and_then(|r| HeaderValue::from_str(r).ok()) {
        h.insert("x-repo-commit", rev);
    }
    match e {
        HubError::Unauthorized => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        HubError::MethodNotAllowed => {
            h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        _ => {}
    }
    response
}

/// The request target for the access log: at most 512 characters, control characters
/// escaped (hyper rejects most of them anyway).
pub fn loggable(target: &str) -> String {
    let mut out: String = target
        .chars()
        .take(512)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if target.len() > 512 {
        out.push('…');
    }
    out
}

/// Only reads are served.
pub fn is_allowed_method(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(repo: &str, revision: &str, path: &str) -> Route {
        Route::Resolve {
            repo: repo.into(),
            revision: revision.into(),
            path: path.into(),
        }
    }

    #[test]
    fn hub_paths() {
        assert_eq!(parse("/health").unwrap(), Route::Health);
        assert_eq!(parse("/api/models").unwrap(), Route::ListModels);
        assert_eq!(
            parse("/api/models/org/name").unwrap(),
            Route::Info {
                repo: "org/name".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            parse("/api/models/gpt2").unwrap(),
            Route::Info {
                repo: "gpt2".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            parse("/api/models/gpt2/revision/abc").unwrap(),
            Route::Info {
                repo: "gpt2".into(),
                revision: "abc".into()
            }
        );
        assert_eq!(
            parse("/api/models/org/name/revision/refs%2Fpr%2F1").unwrap(),
            Route::Info {
                repo: "org/name".into(),
                revision: "refs/pr/1".into()
            }
        );
        assert_eq!(
            parse("/api/models/org/name/tree/main/sub%2Fdir").unwrap(),
            Route::Tree {
                repo: "org/name".into(),
                revision: "main".into(),
                path: "sub/dir".into()
            }
        );
        assert_eq!(
            parse("/api/models/gpt2/tree/main").unwrap(),
            Route::Tree {
                repo: "gpt2".into(),
                revision: "main".into(),
                path: "".into()
            }
        );
        assert_eq!(
            parse("/org/name/resolve/main/a/b%20c.json").unwrap(),
            resolve("org/name", "main", "a/b c.json")
        );
        assert_eq!(
            parse("/gpt2/resolve/main/model.safetensors").unwrap(),
            resolve("gpt2", "main", "model.safetensors")
        );
        assert_eq!(
            parse("/gpt2/resolve/main/resolve/x").unwrap(),
            resolve("gpt2", "main", "resolve/x")
        );
        assert_eq!(
            parse("/datasets/org/name/resolve/main/x").unwrap(),
            Route::OtherRepoType
        );
    }

    #[test]
    fn traversal_and_garbage_are_rejected() {
        for p in [
            "/org/name/resolve/main/../../etc/passwd",
            "/org/name/resolve/main/%2e%2e/x",
            "/org/name/resolve/main/%2E%2E%2Fx",
            "/org/name/resolve/main/a%2Fb",
            "/org/name/resolve/main/a%5Cb",
            "/org/name/resolve/main//etc/passwd",
            "/org/name/resolve/main/a/./b",
            "/org/name/resolve/main/a%00b",
            "/org/name/resolve/main/%zz",
            "/org/name/resolve/main/%ff",
            "/../name/resolve/main/x",
            "/org/%2e%2e/resolve/main/x",
            "/api/models/org/name/tree/main/%2e%2e%2f%2e%2e",
            "/api/models/org/name/tree/main/a%2F%2Fb",
            "//etc/passwd/resolve/main/x",
            "relative",
        ] {
            let r = parse(p);
            assert!(matches!(r, Err(HubError::BadRequest(_))), "{p}: {r:?}");
        }
        for p in ["/org", "/org/name", "/api", "/org/name/blob/main/x"] {
            assert!(matches!(parse(p), Err(HubError::NotFound)), "{p}");
        }
        assert_eq!(parse("/").unwrap(), Route::Report);
        assert_eq!(parse("/api/report").unwrap(), Route::ReportJson);
    }

    #[test]
    fn if_none_match() {
        let tag = "\"abc\"";
        assert!(etag_matches(b"\"abc\"", tag));
        assert!(etag_matches(b"W/\"abc\"", tag));
        assert!(etag_matches(b"\"x\", \"abc\"", tag));
        assert!(etag_matches(b"*", tag));
        assert!(!etag_matches(b"\"abcd\"", tag));
        assert!(!etag_matches(b"abc", tag));
    }

    #[test]
    fn log_targets_are_bounded() {
        assert_eq!(loggable("/a\nb"), "/a\\nb");
        assert_eq!(loggable(&"x".repeat(600)).chars().count(), 513);
    }
}
