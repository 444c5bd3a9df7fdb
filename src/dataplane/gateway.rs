//! The invoke gateway: the in-memory route table, and streaming reverse-proxying of
//! `/invoke/{project}/{function}/{*path}` to a pooled instance, with forwarded headers,
//! timeouts and error mapping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;

use crate::http_error::ApiError;
use crate::dataplane::pool::{AcquireError, FunctionPool, Lease};
use crate::dataplane::upgrade;
use crate::dataplane::upstream::{callers_fault, AnswerBody, UpstreamError};
use hyper_util::rt::TokioIo;

/// Where a function's requests go.
#[derive(Clone)]
pub enum Route {
    Http(Arc<FunctionPool>),
    /// Cron-only: never reachable over HTTP.
    Cron,
}

/// project → function → route. Swapped per project when a deployment goes live.
#[derive(Default)]
pub struct RouteTable {
    projects: RwLock<HashMap<String, Arc<HashMap<String, Route>>>>,
    /// project → SHA-256 of its invoke key (consulted only for `auth: private` functions).
    invoke_keys: RwLock<HashMap<String, [u8; 32]>>,
}

/// Answers with a `Content-Length` up to this size are read whole before being forwarded.
const BUFFER_ANSWERS_UP_TO: u64 = 64 * 1024;

/// The header that carries a project's invoke key to its `auth: private` functions.
pub const INVOKE_KEY_HEADER: &str = "x-eserveless-key";

impl RouteTable {
    pub fn get(&self, project: &str, function: &str) -> Option<Route> {
        let map = self.projects.read().unwrap_or_else(|p| p.into_inner());
        map.get(project).and_then(|fns| fns.get(function).cloned())
    }

    /// Why `project`/`function` has no route, with the closest live name and what to type next.
    /// Names only of live routes: what anyone could find by invoking.
    pub fn not_found(&self, project: &str, function: &str) -> String {
        let map = self.projects.read().unwrap_or_else(|p| p.into_inner());
        let Some(functions) = map.get(project) else {
            let hint = crate::manifest::suggest(project, map.keys().map(String::as_str));
            let hint = hint.map_or_else(String::new, |p| format!(" (did you mean `{p}`?)"));
            return format!("no project `{project}` is live on this server{hint}; `eserveless ls` lists your projects and `eserveless deploy` makes one live");
        };
        let mut names: Vec<&str> = functions.keys().map(String::as_str).collect();
        names.sort_unstable();
        let hint = crate::manifest::suggest(function, names.iter().copied()).map_or_else(String::new, |f| format!("; did you mean `{f}`?"));
        let listed = if names.len() > 10 { format!("{}, …", names[..10].join(", ")) } else { names.join(", ") };
        format!("project `{project}` has no live function `{function}`{hint} (names are case-sensitive; its functions: {listed})")
    }

    pub fn project(&self, project: &str) -> Option<Arc<HashMap<String, Route>>> {
        self.projects.read().unwrap_or_else(|p| p.into_inner()).get(project).cloned()
    }

    /// Replaces a project's routes atomically; returns the old ones.
    pub fn set_project(&self, project: &str, routes: HashMap<String, Route>) -> Option<Arc<HashMap<String, Route>>> {
        self.projects.write().unwrap_or_else(|p| p.into_inner()).insert(project.to_string(), Arc::new(routes))
    }

    pub fn remove_project(&self, project: &str) -> Option<Arc<HashMap<String, Route>>> {
        self.invoke_keys.write().unwrap_or_else(|p| p.into_inner()).remove(project);
        self.projects.write().unwrap_or_else(|p| p.into_inner()).remove(project)
    }

    pub fn set_invoke_key(&self, project: &str, hash: &[u8]) {
        if let Ok(h) = <[u8; 32]>::try_from(hash) {
            self.invoke_keys.write().unwrap_or_else(|p| p.into_inner()).insert(project.to_string(), h);
        }
    }

    /// Checks a presented invoke key in constant time; no key set means nothing matches.
    pub fn invoke_key_matches(&self, project: &str, presented: &[u8]) -> bool {
        let stored = self.invoke_keys.read().unwrap_or_else(|p| p.into_inner()).get(project).copied();
        let presented = std::str::from_utf8(presented).unwrap_or("");
        crate::infra::keys::hash_matches(presented, stored.as_ref().map_or(&[][..], |h| &h[..]))
    }
}

/// The proxy. Each instance keeps its own keep-alive HTTP/1.1 connections
/// ([`crate::dataplane::upstream::Endpoint`]), which live and die with it.
#[derive(Clone)]
pub struct Gateway {
    routes: Arc<RouteTable>,
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Splits `/invoke/{project}/{function}[/rest]` into its parts; rest keeps its encoding.
pub fn split_invoke_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/invoke/")?;
    let (project, after) = rest.split_once('/')?;
    let (function, tail) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    if project.is_empty() || function.is_empty() {
        return None;
    }
    Some((project, function, if tail.is_empty() { "/" } else { tail }))
}

/// A response body that holds the instance until the body has been sent.
///
/// After each frame it looks one step ahead: when the end of the answer is already there,
/// [`is_end_stream`](http_body::Body::is_end_stream) says so, and hyper writes the last chunk
/// together with the end of a chunked answer (one write to the client instead of two).
struct LeasedBody {
    inner: AnswerBody,
    lease: Option<Lease>,
    ahead: Ahead,
}

enum Ahead {
    Nothing,
    Frame(http_body::Frame<bytes::Bytes>),
    End,
    Failed(hyper::Error),
}

impl LeasedBody {
    fn new(inner: AnswerBody, lease: Lease) -> Self {
        LeasedBody { inner, lease: Some(lease), ahead: Ahead::Nothing }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let r = http_body::Body::poll_frame(Pin::new(&mut self.inner), cx);
        match &r {
            // Read whole: the instance is free again.
            Poll::Ready(None) => self.lease = None,
            // Failed mid-answer: take the instance out of the pool, unless it was the caller's
            // side that failed (its upload broke off while the answer streamed).
            Poll::Ready(Some(Err(e))) => {
                if let Some(l) = self.lease.take() {
                    if !callers_fault(e) {
                        l.mark_broken();
                    }
                }
            }
            _ => {}
        }
        r
    }
}

impl http_body::Body for LeasedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = match std::mem::replace(&mut this.ahead, Ahead::Nothing) {
            Ahead::Frame(f) => f,
            Ahead::End => return Poll::Ready(None),
            Ahead::Failed(e) => return Poll::Ready(Some(Err(e))),
            Ahead::Nothing => match this.poll_inner(cx) {
                Poll::Ready(Some(Ok(f))) => f,
                other => return other,
            },
        };
        this.ahead = match this.poll_inner(cx) {
            Poll::Pending => Ahead::Nothing,
            Poll::Ready(None) => Ahead::End,
            Poll::Ready(Some(Ok(f))) => Ahead::Frame(f),
            Poll::Ready(Some(Err(e))) => Ahead::Failed(e),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match self.ahead {
            Ahead::End => true,
            Ahead::Nothing => self.inner.is_end_stream(),
            Ahead::Frame(_) | Ahead::Failed(_) => false,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.ahead {
            Ahead::Nothing => self.inner.size_hint(),
            Ahead::End | Ahead::Failed(_) => http_body::SizeHint::with_exact(0),
            // Only asked before the first frame; a stashed frame makes the inner hint too small.
            Ahead::Frame(_) => http_body::SizeHint::default(),
        }
    }
}

impl Gateway {
    pub fn new(routes: Arc<RouteTable>) -> Self {
        Gateway { routes }
    }

    /// Proxies one invocation.
    pub async fn invoke(&self, req: Request<Body>, client_addr: Option<SocketAddr>) -> Response<Body> {
        let began = std::time::Instant::now();
        let mut known: Option<Arc<FunctionPool>> = None;
        let resp = match self.try_invoke(req, client_addr, &mut known).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        // Only routed functions are counted, so random paths cannot grow the label sets.
        if let Some(pool) = known {
            pool.metrics().answered(resp.status().as_u16(), began.elapsed());
        }
        resp
    }

    /// One invocation, in steps: route lookup, invoke key check, acquire, forward, answer.
    async fn try_invoke(
        &self,
        mut req: Request<Body>,
        client_addr: Option<SocketAddr>,
        known: &mut Option<Arc<FunctionPool>>,
    ) -> Result<Response<Body>, ApiError> {
        // A cheap clone (shared bytes) that the path slices below borrow from while `req` moves on.
        let uri = req.uri().clone();
        let (project, function, rest) = split_invoke_path(uri.path())
            .ok_or_else(|| ApiError::not_found("not_found", "use /invoke/<project>/<function>[/path]"))?;
        let pool = self.route(project, function)?;
        *known = Some(pool.clone());
        if pool.revision().private {
            self.check_invoke_key(project, function, req.headers())?;
        }
        if upgrade::is_websocket(req.method(), req.version(), req.headers()) {
            let client_io = hyper::upgrade::on(&mut req);
            return self.upgrade(req, client_io, Target { uri: &uri, project, function, rest, client_addr }, pool).await;
        }
        let timeout = pool.revision().timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut pool, mut lease) = self.acquire(pool, project, function, deadline, timeout, &[]).await?;
        pool.metrics().acquired(lease.kind, lease.took);
        let mut up = upstream_request(req, &uri, rest, client_addr, pool.forwarded_prefix())?;
        let call = Call { project, function, timeout, deadline };
        // An instance lost before it answered (its node died) leaves the request to another:
        // one never sent goes as it is; one sent goes again only if it is idempotent and has
        // no body (a GET), since the lost instance may have acted on it.
        let replay = replayable(&up);
        // Nodes whose instance lost this request: it is not sent to them again (a dying node
        // holds more instances than one, and each would fail it in turn).
        let mut avoid: Vec<String> = Vec::new();
        for lost in 0.. {
            // A reset connection is retried once, and only to an instance on another machine
            // (where a dying node resets connections): a request that crashes its function
            // must not crash one instance after another.
            let node = lease.endpoint.node().map(str::to_owned);
            let reset_retry = replay.is_some() && lost == 0 && node.is_some();
            match call.forward(up, lease, lost < MAX_INSTANCES_LOST, reset_retry).await {
                Forwarded::Done(r) => return r,
                Forwarded::Again(unsent) => {
                    up = match (unsent, &replay) {
                        (Some(req), _) => req,
                        (None, Some(parts)) => Request::from_parts(parts.clone(), Body::empty()),
                        (None, None) => unreachable_lost(function)?,
                    };
                    tracing::info!(project, function, node = node.as_deref().unwrap_or("-"), "instance lost before it answered; the request goes to another node");
                    avoid.extend(node);
                    (pool, lease) = self.acquire(pool, project, function, deadline, timeout, &avoid).await?;
                }
            }
        }
        unreachable_lost(function)
    }

    /// A WebSocket handshake: forwarded on a connection of its own to an instance (its
    /// lease held for the life of the connection); once the instance switched protocols, the
    /// 101 goes to the client and [`upgrade::relay`] carries the connection in a task of its own.
    /// A function that declines (any other status) is answered as usual.
    async fn upgrade(&self, mut req: Request<Body>, client_io: hyper::upgrade::OnUpgrade, to: Target<'_>, pool: Arc<FunctionPool>) -> Result<Response<Body>, ApiError> {
        let Target { uri, project, function, rest, client_addr } = to;
        // The server's hold on the client connection (its places under the connection caps)
        // goes with the upgraded connection.
        let hold = req.extensions_mut().remove::<upgrade::ConnectionHold>();
        let protocol = req.headers().get(header::UPGRADE).cloned();
        let timeout = pool.revision().timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (pool, lease) = self.acquire(pool, project, function, deadline, timeout, &[]).await?;
        pool.metrics().acquired(lease.kind, lease.took);
        let mut up = upstream_request(req, uri, rest, client_addr, pool.forwarded_prefix())?;
        up.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = protocol {
            up.headers_mut().insert(header::UPGRADE, p);
        }
        let call = Call { project, function, timeout, deadline };
        let mut resp = match tokio::time::timeout_at(deadline, lease.endpoint.send_upgrade(up)).await {
            Err(_) => return Err(call.timed_out()),
            Ok(Err(e)) => {
                if !e.is_callers() {
                    lease.mark_broken();
                }
                return Err(call.failed(e.is_callers(), &e));
            }
            Ok(Ok(resp)) => resp,
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return call.answer(resp, lease).await;
        }
        let instance_io = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let accepted = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(crate::http_error::ERROR_HEADER);
        parts.extensions = Default::default();
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, accepted.unwrap_or(HeaderValue::from_static("websocket")));
        if let Ok(v) = HeaderValue::from_str(&format!("{};dur={}", lease.kind.as_str(), lease.took.as_millis())) {
            parts.headers.append("server-timing", v);
        }
        let (limits, retiring) = (pool.upgrade_limits(), pool.retiring());
        let stopping = hold.as_ref().map(upgrade::ConnectionHold::stopping).unwrap_or_default();
        let (project, function) = (project.to_string(), function.to_string());
        tokio::spawn(async move {
            let _hold = hold;
            let (client, instance) = match tokio::join!(client_io, instance_io) {
                (Ok(c), Ok(i)) => (c, i),
                (c, i) => {
                    let (c, i) = (c.err().map(|e| e.to_string()), i.err().map(|e| e.to_string()));
                    tracing::debug!(project, function, client = ?c, instance = ?i, "upgrade not completed");
                    return;
                }
            };
            let endpoint = lease.endpoint.clone();
            let began = std::time::Instant::now();
            let ended = upgrade::relay(TokioIo::new(client), TokioIo::new(instance), limits, retiring, stopping, endpoint.gone()).await;
            tracing::debug!(project, function, ?ended, secs = began.elapsed().as_secs(), "upgraded connection ended");
            drop(lease);
        });
        Ok(Response::from_parts(parts, Body::empty()))
    }

    /// The pool serving `project`/`function` now.
    fn route(&self, project: &str, function: &str) -> Result<Arc<FunctionPool>, ApiError> {
        match self.routes.get(project, function) {
            Some(Route::Http(pool)) => Ok(pool),
            Some(Route::Cron) => Err(ApiError::not_found(
                "not_http",
                format!("function `{function}` of project `{project}` is a cron function and cannot be invoked over HTTP"),
            )),
            None => Err(ApiError::not_found("function_not_found", self.routes.not_found(project, function))),
        }
    }

    /// A private function needs the project's current invoke key.
    fn check_invoke_key(&self, project: &str, function: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        match headers.get(INVOKE_KEY_HEADER) {
            None => Err(ApiError::unauthorized(
                "invoke_key_required",
                format!("function `{function}` is private: send the project's invoke key in the `X-Eserveless-Key` header (`eserveless keys rotate {project}` makes a new one)"),
            )),
            Some(k) if !self.routes.invoke_key_matches(project, k.as_bytes()) => Err(ApiError::unauthorized(
                "invoke_key_invalid",
                format!("the invoke key is not project `{project}`'s current key; it may have been rotated"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// An instance for the request, not on the `avoid`ed nodes, following the route if a
    /// redeploy switched it meanwhile; with the pool that gave it.
    async fn acquire(
        &self,
        mut pool: Arc<FunctionPool>,
        project: &str,
        function: &str,
        deadline: tokio::time::Instant,
        timeout: std::time::Duration,
        avoid: &[String],
    ) -> Result<(Arc<FunctionPool>, Lease), ApiError> {
        let mut attempts = 0;
        loop {
            match pool.acquire_avoiding(deadline, avoid).await {
                Ok(lease) => return Ok((pool, lease)),
                // A redeploy switched the route between lookup and acquire: follow it.
                Err(AcquireError::Retired) if attempts < 3 => {
                    attempts += 1;
                    pool = self.route(project, function)?;
                }
                Err(e) => return Err(acquire_error(e, function, timeout)),
            }
        }
    }
}

/// The answer to a request that got no instance.
fn acquire_error(e: AcquireError, function: &str, timeout: std::time::Duration) -> ApiError {
    match e {
        AcquireError::QueueFull(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string()).with_retry_after(1),
        AcquireError::Deadline(_) => ApiError::unavailable("no_capacity", e.to_string()).with_retry_after(1),
        AcquireError::StartDeadline(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "function_timeout",
            format!(
                "function `{function}` did not answer within its timeout of {} (its instance was still starting)",
                humantime::format_duration(timeout)
            ),
        ),
        AcquireError::StartFailed { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "start_failed", e.to_string()),
        AcquireError::Retired => ApiError::unavailable("redeploying", "the function is being redeployed; retry"),
        // Retry-After: a node may come back, or another instance end, within seconds.
        AcquireError::NoRoom { .. } => ApiError::unavailable("no_node_capacity", e.to_string()).with_retry_after(5),
    }
}

/// The request as the instance gets it: origin-form path, no hop-by-hop headers nor invoke
/// key, and the forwarded headers.
fn upstream_request(
    req: Request<Body>,
    uri: &Uri,
    rest: &str,
    client_addr: Option<SocketAddr>,
    forwarded_prefix: &HeaderValue,
) -> Result<Request<Body>, ApiError> {
    let (mut parts, body) = req.into_parts();
    let pq = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    // Origin-form: the connection already says which instance this is.
    parts.uri = Uri::try_from(pq).map_err(|e| ApiError::bad_request("bad_path", format!("cannot forward this path: {e}")))?;
    parts.version = axum::http::Version::HTTP_11;
    let original_host = parts.headers.get(header::HOST).cloned();
    if original_host.is_none() {
        parts.headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    strip_hop_by_hop(&mut parts.headers);
    // The key proves the caller to us; the function has no use for it.
    parts.headers.remove(INVOKE_KEY_HEADER);
    let h = &mut parts.headers;
    if let Some(addr) = client_addr {
        let ip = addr.ip().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        h.insert("x-forwarded-host", host);
    }
    h.insert("x-forwarded-prefix", forwarded_prefix.clone());
    Ok(Request::from_parts(parts, body))
}

/// Where a request goes, as the gateway read it from the request.
struct Target<'a> {
    uri: &'a Uri,
    project: &'a str,
    function: &'a str,
    rest: &'a str,
    client_addr: Option<SocketAddr>,
}

/// One request on its way through an instance: what its answers and errors need.
struct Call<'a> {
    project: &'a str,
    function: &'a str,
    timeout: std::time::Duration,
    deadline: tokio::time::Instant,
}

/// Instances a request may lose before it fails (each to a lost node or a dead connection).
const MAX_INSTANCES_LOST: usize = 3;

/// What became of one try at forwarding a request.
enum Forwarded {
    Done(Result<Response<Body>, ApiError>),
    /// The instance was lost before it answered; the request, when it was never sent.
    Again(Option<Request<Body>>),
}

/// The head of a request that may be sent again after its instance was lost: an idempotent
/// method (RFC 9110 9.2.2) and no body.
fn replayable(req: &Request<Body>) -> Option<http::request::Parts> {
    use http_body::Body as _;
    let idempotent = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
    let bodiless = req.body().size_hint().exact() == Some(0);
    if !(idempotent && bodiless) {
        return None;
    }
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    Some(head.into_parts().0)
}

/// A lost instance with nothing to send again: the caller's request failed.
fn unreachable_lost<T>(function: &str) -> Result<T, ApiError> {
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "instance_lost",
        format!("the instance serving `{function}` was lost (its node stopped answering) before it answered; the request may have been acted on, so it was not sent again"),
    ))
}

impl Call<'_> {
    /// Sends the request to the leased instance and answers with its response; when the
    /// instance is lost before any answer and `may_retry`, says so instead of failing. With
    /// `on_reset` it says so too when the connection failed before the answer's head (a node
    /// dying can reset connections rather than go silent), as proxies do for idempotent
    /// requests.
    async fn forward(&self, up: Request<Body>, lease: Lease, may_retry: bool, on_reset: bool) -> Forwarded {
        let resp = match tokio::time::timeout_at(self.deadline, lease.endpoint.send(up)).await {
            Err(_) => return Forwarded::Done(Err(self.timed_out())),
            Ok(Err(e)) => {
                if !e.is_callers() {
                    lease.mark_broken();
                }
                let connection_failed = matches!(e, UpstreamError::Http(_) | UpstreamError::Connect(_)) && !e.is_callers();
                if may_retry && (e.instance_lost() || (on_reset && connection_failed)) {
                    return Forwarded::Again(match e {
                        UpstreamError::Unsent { request, .. } => Some(*request),
                        _ => None,
                    });
                }
                return Forwarded::Done(Err(self.failed(e.is_callers(), &e)));
            }
            Ok(Ok(resp)) => resp,
        };
        Forwarded::Done(self.answer(resp, lease).await)
    }

    /// The instance's response, with the lease going along with its body.
    async fn answer(&self, resp: Response<AnswerBody>, lease: Lease) -> Result<Response<Body>, ApiError> {
        let (mut parts, answer) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // Only the platform's own refusals carry it: a function cannot pass for one.
        parts.headers.remove(crate::http_error::ERROR_HEADER);
        let timing = format!("{};dur={}", lease.kind.as_str(), lease.took.as_millis());
        if let Ok(v) = HeaderValue::from_str(&timing) {
            parts.headers.append("server-timing", v);
        }
        // A small answer of announced length is read whole before its head is sent: head and
        // body then leave in one write, and the instance is released sooner. Anything else
        // (chunked, streamed, large) is streamed as it comes.
        let small = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= BUFFER_ANSWERS_UP_TO);
        if small {
            use http_body_util::BodyExt;
            // The lease goes with the body: released at its end, the instance marked broken if
            // the answer fails half-way.
            return match tokio::time::timeout_at(self.deadline, LeasedBody::new(answer, lease).collect()).await {
                Ok(Ok(collected)) => Ok(Response::from_parts(parts, Body::from(collected.to_bytes()))),
                Ok(Err(e)) => Err(self.failed(callers_fault(&e), &e)),
                Err(_) => Err(self.timed_out()),
            };
        }
        let body = Body::new(LeasedBody::new(answer, lease));
        Ok(Response::from_parts(parts, body))
    }

    fn timed_out(&self) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "function_timeout",
            format!("function `{}` did not answer within its timeout of {}", self.function, humantime::format_duration(self.timeout)),
        )
    }

    /// Whose fault a failed exchange was. The instance was already marked broken where it
    /// was to blame (in `forward` for the head, in `LeasedBody` for the body).
    fn failed(&self, callers: bool, e: &dyn std::fmt::Display) -> ApiError {
        let (project, function) = (self.project, self.function);
        if callers {
            // A client that abandons its upload says nothing about the instance: it stays.
            tracing::debug!(project, function, error = %e, "request not forwarded whole");
            ApiError::bad_request(
                "request_incomplete",
                format!("the request to `{function}` could not be forwarded whole ({e}); send it again with a complete body"),
            )
        } else {
            tracing::warn!(project, function, error = %e, "instance failed mid-request");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "function_failed",
                format!("function `{function}` closed the connection without a complete answer (it may have crashed); the next request gets a fresh instance"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_paths() {
        assert_eq!(split_invoke_path("/invoke/p/f"), Some(("p", "f", "/")));
        assert_eq!(split_invoke_path("/invoke/p/f/"), Some(("p", "f", "/")));
        assert_eq!(split_invoke_path("/invoke/p/f/a/b%20c"), Some(("p", "f", "/a/b%20c")));
        assert_eq!(split_invoke_path("/invoke/p"), None);
        assert_eq!(split_invoke_path("/invoke//f"), None);
        assert_eq!(split_invoke_path("/other/p/f"), None);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-kept").and_then(|v| v.to_str().ok()), Some("yes"));
    }

    #[test]
    fn a_request_without_an_instance_gets_the_status_of_why() {
        let timeout = std::time::Duration::from_secs(2);
        let failed = AcquireError::StartFailed { function: "f".into(), detail: "exit 1".into() };
        #[rustfmt::skip]
        let cases = [
            (AcquireError::QueueFull("f".into()), StatusCode::TOO_MANY_REQUESTS, "queue_full", Some(1)),
            (AcquireError::Deadline("f".into()), StatusCode::SERVICE_UNAVAILABLE, "no_capacity", Some(1)),
            (AcquireError::StartDeadline("f".into()), StatusCode::GATEWAY_TIMEOUT, "function_timeout", None),
            (failed, StatusCode::BAD_GATEWAY, "start_failed", None),
            (AcquireError::Retired, StatusCode::SERVICE_UNAVAILABLE, "redeploying", None),
            (AcquireError::NoRoom { function: "f".into(), detail: "no suitable node".into() }, StatusCode::SERVICE_UNAVAILABLE, "no_node_capacity", Some(5)),
        ];
        for (e, status, code, retry_after) in cases {
            let what = format!("{e:?}");
            let a = acquire_error(e, "f", timeout);
            assert_eq!((a.status, a.code, a.retry_after), (status, code, retry_after), "{what}");
        }
        let slow = acquire_error(AcquireError::StartDeadline("f".into()), "f", timeout);
        assert!(slow.message.contains("timeout of 2s"), "names the timeout: {}", slow.message);
    }

    #[test]
    fn only_idempotent_bodiless_requests_are_sent_again_after_their_instance_is_lost() {
        let req = |m: &str, body: Body| Request::builder().method(m).uri("/a?b=1").header("x-k", "v").body(body).expect("req");
        let head = replayable(&req("GET", Body::empty())).expect("a GET is sent again");
        assert_eq!((head.method.as_str(), head.uri.to_string(), head.headers["x-k"].to_str().ok()), ("GET", "/a?b=1".into(), Some("v")));
        assert!(replayable(&req("DELETE", Body::empty())).is_some());
        assert!(replayable(&req("POST", Body::empty())).is_none(), "not idempotent");
        assert!(replayable(&req("PUT", Body::from("x"))).is_none(), "a body cannot be sent twice");
    }

    #[test]
    fn route_table_swaps_per_project() {
        let t = RouteTable::default();
        assert!(t.get("p", "f").is_none());
        t.set_project("p", HashMap::from([("f".to_string(), Route::Cron)]));
        assert!(matches!(t.get("p", "f"), Some(Route::Cron)));
        assert!(t.get("p", "g").is_none());
        assert!(t.remove_project("p").is_some());
        assert!(t.get("p", "f").is_none());
    }
}
