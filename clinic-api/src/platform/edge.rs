//! The HTTP edge: the layers every answer passes through (tracing by route template, metrics,
//! body limit and read timeout, request timeout, security headers) around the routes `app`
//! assembled, and the serving loop (connection cap, header read timeout, graceful drain).
//!
//! Every answer the edge makes itself is a problem body: unknown route 404, wrong method 405,
//! oversize body 413 (at once when the declared length is over the limit, before reading), a
//! body that does not arrive in time 408, a handler that does not answer in time 503. Streaming
//! routes (marked with `Routes::streaming`: image uploads and files, the consult WebSocket) are
//! exempt from the body buffering and the request timeout; they have their own limits.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::platform::authz::Routes;
use crate::platform::config::HttpConfig;
use crate::platform::error::{ApiError, ErrorCode, not_found_fallback};
use crate::platform::ops;
use crate::platform::state::AppState;

/// The HTTP application: `routes`, each behind its policy, inside the edge's layers.
pub fn router(routes: Routes, state: &AppState) -> Router {
    let http = &state.config.http;
    let guard = Arc::new(Guard {
        streaming: routes
            .specs()
            .into_iter()
            .filter(|s| s.streaming)
            .map(|s| (s.method, s.path))
            .collect(),
        body_limit: http.body_limit_bytes,
        body_read: Duration::from_secs(http.body_read_timeout_secs.max(1)),
        request: Duration::from_secs(http.request_timeout_secs.max(1)),
    });
    let origins = Arc::new(Origins {
        scheme: if http.behind_tls { "https" } else { "http" },
        allowed: http
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect(),
    });
    let app = routes
        .into_router(state.clone())
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(guard, guard_request))
        // Outside the guard: a refused request's body is not even read.
        .layer(axum::middleware::from_fn_with_state(
            origins,
            same_site_writes,
        ))
        .layer(axum::middleware::from_fn(ops::track))
        .layer(
            TraceLayer::new_for_http()
                // Method and route template only: the raw URI may carry ids and query values.
                .make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), route = %route)
                }),
        )
        .layer(DefaultBodyLimit::max(http.body_limit_bytes))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Answers carry PHI: no shared or browser caching.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    // HSTS only when the server is reached over TLS (RFC 6797 §7.2: not over plain HTTP). The
    // server terminates no TLS itself, so the configuration says whether a proxy in front does.
    // No `includeSubDomains`: other hosts of the domain are not this server's to decide.
    let app = if http.behind_tls {
        app.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ))
    } else {
        app
    };
    app.with_state(state.clone())
}

/// Which origins may send state-changing requests: the server's own (`scheme` and the request's
/// `Host`) and the configured ones (lowercased, no trailing slash).
struct Origins {
    scheme: &'static str,
    allowed: HashSet<String>,
}

impl Origins {
    /// Whether a request with these headers and a state-changing method may go on.
    ///
    /// A browser names the page that sent a request in `Origin` (every cross-origin request and
    /// every same-origin non-GET fetch or form post; `null` for opaque origins) and in
    /// `Sec-Fetch-Site`; clients other than browsers (the CLI, the load test, curl) send
    /// neither, and nothing a page can do removes them, so their absence passes. `SameSite=Strict`
    /// already keeps the session cookie off cross-site requests; this also refuses the ones that
    /// need no cookie (sign-in, consult links) and holds if a browser's SameSite handling fails.
    fn admit(&self, headers: &axum::http::HeaderMap) -> bool {
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        let Some(origin) = headers.get(header::ORIGIN) else {
            return !cross_site;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        if self.allowed.contains(&origin) {
            return true;
        }
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin == format!("{}://{}", self.scheme, host.to_ascii_lowercase())
            });
        own && !cross_site
    }
}

/// Refuses POST, PUT, PATCH and DELETE sent by a page of another origin (see [`Origins::admit`]).
async fn same_site_writes(
    State(origins): State<Arc<Origins>>,
    req: Request,
    next: Next,
) -> Response {
    let writes = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if writes && !origins.admit(req.headers()) {
        tracing::info!("cross-site request refused");
        return closing(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::CrossOrigin,
            "state-changing requests are accepted only from this server's own pages",
        ));
    }
    next.run(req).await
}

/// A known route called with a method it does not have (axum keeps the `Allow` header).
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

/// What the request guard needs: which routes stream, and the limits of the others.
struct Guard {
    streaming: HashSet<(Method, &'static str)>,
    body_limit: usize,
    body_read: Duration,
    request: Duration,
}

/// An answer after which the connection closes: the rest of the request body, if any, is not
/// read (RFC 9112 §9.6), so the connection cannot carry another request.
fn closing(err: ApiError) -> Response {
    let mut resp = err.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn too_large() -> Response {
    closing(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BodyTooLarge,
        "the request body is larger than allowed",
    ))
}

/// Non-streaming routes: a declared length over the limit is refused before anything is read;
/// the body is read whole (it is small: at most `http.body_limit_bytes`) within the body read
/// timeout, so a stalled body (short of its declared length, or chunked and never finished)
/// gets 408 instead of holding a task and a connection; and the handler must answer within
/// the request timeout.
async fn guard_request(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let streaming = req.extensions().get::<MatchedPath>().is_some_and(|p| {
        guard
            .streaming
            .contains(&(req.method().clone(), p.as_str()))
    });
    if streaming {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > guard.body_limit as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, guard.body_limit);
    let bytes = match tokio::time::timeout(guard.body_read, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(_)) => {
            return closing(ApiError::bad_request(
                ErrorCode::UnreadableBody,
                "the request body could not be read",
            ));
        }
        Err(_) => {
            return closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BodyTimeout,
                format!(
                    "the request body did not arrive within {} s",
                    guard.body_read.as_secs()
                ),
            ));
        }
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    match tokio::time::timeout(guard.request, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!("request timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Timeout,
                format!(
                    "the request was not answered within {} s; retry shortly",
                    guard.request.as_secs()
                ),
            )
            .with_retry_after(1)
            .into_response()
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains: the listener closes (new
/// connections are refused), requests in flight finish (up to `http.drain_timeout_secs`; then
/// their connections are closed), idle connections close at once.
///
/// At most `http.max_connections` connections are open at once, upgraded WebSockets included
/// (the permit lives in the connection's socket, which a WebSocket takes over); past the cap
/// the loop stops accepting and new connections wait in the listen backlog, as mini-redis
/// does. A request head must arrive within `http.header_read_timeout_secs` (hyper closes the
/// connection otherwise, and closes a keep-alive connection idle for that long).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    http: &HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(http.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(http.header_read_timeout_secs.max(1)));
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, addr) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        conns.spawn(connection(
            builder.clone(),
            Capped::new(stream, permit),
            addr,
            app.clone(),
            stopping.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let drain = Duration::from_secs(http.drain_timeout_secs);
    let drained =
        tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "drain deadline passed; closing the remaining connections"
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// One connection: serves its requests (and hands an upgrade over) until it closes, or, once
/// the server stops, until its request in flight is answered.
async fn connection(
    builder: Arc<hyper::server::conn::http1::Builder>,
    io: Capped,
    addr: SocketAddr,
    app: Router,
    mut stopping: watch::Receiver<bool>,
) {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(addr));
            tower::ServiceExt::oneshot(app.clone(), req)
        });
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = crate::platform::jobs::stopped(&mut stopping) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A connection's socket with its place under the connection cap: the permit is given back when
/// the socket is dropped, which for an upgraded connection is when the WebSocket ends.
///
/// It also gives the HTTP parser's refusals a problem body. hyper 1.x answers a request head it
/// cannot parse (bad method, URI, header or version: 400; too many or too large headers: 431;
/// URI too long: 414) itself, before any service sees it, with an empty body, and has no option
/// to add one or to leave the answer to us (`proto/h1/conn.rs` `on_parse_error` writes the head
/// from `role.rs` `Server::on_error` unconditionally, then the connection ends with the parse
/// error). Checking `hyper::Error::is_parse()` once the connection future ends is too late: the
/// empty answer is on the wire by then. So the answer is replaced here, on its way out: it is
/// the only head with one of those statuses and `content-length: 0` that this server writes
/// (the application's own errors all carry a problem body), written as one whole buffer while
/// no other answer is in progress, and after it hyper closes the connection.
struct Capped {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Bytes accepted from hyper but not yet on the socket (only ever a replaced answer).
    pending: Vec<u8>,
}

impl Capped {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit) -> Self {
        Self {
            stream,
            _permit: permit,
            pending: Vec::new(),
        }
    }

    /// Writes what is pending; `Ready(Ok)` once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }

    /// If `buf` is hyper's own answer to an unparsable request, queues the problem answer in
    /// its place and says so.
    fn replaced(&mut self, buf: &[u8]) -> bool {
        match parser_refusal(buf) {
            Some(answer) => {
                self.pending = answer;
                true
            }
            None => false,
        }
    }
}

/// The problem answer for hyper's empty answer `head` to a request it could not parse, if `head`
/// is one (a whole head, nothing after it, one of the parser's statuses, an empty body).
fn parser_refusal(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let lines = text.strip_suffix("\r\n\r\n")?;
    if lines.contains("\r\n\r\n") {
        return None;
    }
    let (status, code, detail) = match lines.get(..13)? {
        "HTTP/1.1 400 " => (
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedRequest,
            "the request is not valid HTTP/1.1 (request line, a header or its value)",
        ),
        "HTTP/1.1 431 " => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge,
            "the request has too many headers or they are too large",
        ),
        "HTTP/1.1 414 " => (
            StatusCode::URI_TOO_LONG,
            ErrorCode::UriTooLong,
            "the request URI is too long",
        ),
        _ => return None,
    };
    if !lines
        .split("\r\n")
        .skip(1)
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let body = ApiError::new(status, code, detail).body().to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/problem+json\r\n\
             content-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n\
             x-content-type-options: nosniff\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if self.replaced(buf) {
            // Accepted whole; written by this call if the socket takes it, else by the flush.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        // hyper's answer to an unparsable request is its head alone, in one buffer.
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(first), None) = (nonempty.next(), nonempty.next())
            && self.replaced(first)
        {
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(first.len()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;

    /// A route that takes `takes` to answer, behind the guard with a 100 ms request timeout.
    fn app(takes: Duration, streaming: bool) -> Router {
        let guard = Arc::new(Guard {
            streaming: if streaming {
                HashSet::from([(Method::GET, "/slow")])
            } else {
                HashSet::new()
            },
            body_limit: 1024,
            body_read: Duration::from_secs(5),
            request: Duration::from_millis(100),
        });
        Router::new()
            .route(
                "/slow",
                get(move || async move {
                    tokio::time::sleep(takes).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(guard, guard_request))
    }

    fn get_slow() -> Request {
        Request::builder().uri("/slow").body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_handler_past_the_request_timeout_gets_503_problem() {
        let resp = app(Duration::from_secs(3600), false)
            .oneshot(get_slow())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "timeout");
    }

    #[tokio::test]
    async fn a_streaming_route_is_not_cut_by_the_request_timeout() {
        let resp = app(Duration::from_millis(400), true)
            .oneshot(get_slow())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
