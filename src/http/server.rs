//! The loop every HTTP server runs: it accepts connections and serves them
//! with hyper, bounding what a client that connects and then sends slowly,
//! or not at all, may hold.
//!
//! - At most [`Limits::max_connections`] connections are served at once
//!   by all the servers of the process together (and never more than half
//!   its descriptor limit, so its Postgres, Redis and Kafka connections
//!   always find one); further clients wait in the listen backlog (the
//!   kernel's, not ours), so an idle-connection flood cannot exhaust the
//!   process's descriptors.
//!   Upgraded WebSockets leave this count once upgraded: the gateway bounds
//!   those (per subject, and by their own idle timeout).
//! - [`Limits::header_timeout`] runs whenever hyper waits for a request
//!   head: from the accept, and again after each response. It closes a
//!   bare TCP connection, a head sent byte by byte, and an idle keep-alive.
//! - [`Limits::body_timeout`] bounds the reading of a body; it travels to
//!   [`super::json_body`] as a request extension ([`BodyTimeout`]).
//! - Accept errors other than a client hanging up early (descriptors
//!   exhausted, say) back off instead of spinning.
//! - hyper answers requests it cannot parse by itself, with an empty body;
//!   [`JsonParseErrors`] gives those the JSON error body every other answer
//!   has.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Semaphore};
use warp::hyper;

/// The bounds of one server's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request head: bounds idle keep-alives too.
    pub header_timeout: Duration,
    /// Longest time to read a request body.
    pub body_timeout: Duration,
    /// Connections served at once, by all the process's servers together.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            max_connections: 1024,
        }
    }
}

/// How long the body of one request may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// The connections the process's servers may hold: [`Limits::max_connections`],
/// but at most half the process's descriptor limit. Shared by every server
/// of the process.
#[derive(Clone)]
pub struct Connections {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Connections {
    /// The budget `limits` allows on this machine.
    pub fn new(limits: &Limits) -> Self {
        let mut max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        if let Some(descriptors) = descriptor_limit() {
            let half = usize::try_from(descriptors / 2)
                .unwrap_or(usize::MAX)
                .max(1);
            if half < max {
                tracing::info!(
                    configured = max,
                    descriptors,
                    serving = half,
                    "HTTP_MAX_CONNECTIONS lowered to half the descriptor limit"
                );
                max = half;
            }
        }
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// The soft limit on this process's open descriptors, where the system says.
fn descriptor_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Shortest and longest pause after an accept error.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Serves `filter` on `listener` within `limits` until `shutdown` turns
/// true, then lets the requests in flight finish and returns once every
/// connection has closed.
pub async fn run<F>(
    name: &'static str,
    filter: F,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
    connections: Connections,
) where
    F: warp::Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let Connections {
        permits,
        max: max_connections,
    } = connections;
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut stopping = shutdown.clone();
    let stopping = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopping);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed; stop rather than spin
            },
            () = &mut stopping => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    stream
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64,
                        "cannot accept connections; pausing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            },
            () = &mut stopping => break,
        };
        let _ = stream.set_nodelay(true);
        let service = PerRequest {
            name,
            service: warp::service(filter.clone()),
            timeout: BodyTimeout(limits.body_timeout),
        };
        // HTTP/1.1 only, so hyper's head timer runs from the first byte
        // awaited (a detecting, version-sniffing server would wait for a
        // first byte with no timer at all); WebSockets need HTTP/1.1 anyway.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(
                TokioIo::new(JsonParseErrors::new(stream)),
                TowerToHyperService::new(service),
            )
            .with_upgrades();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    // Answers the request in flight, then closes.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                // A client's fault or departure (bad bytes, a timeout, a
                // reset), already answered where an answer is possible.
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    // Every connection holds a permit until it ends (this waits for the
    // other servers' too: they are stopping as well).
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// `service`, with the body timeout put into every request's extensions
/// and each request run in its own span ([`super::request_span`]). The
/// span is made here rather than with `warp::trace`, which also logs every
/// 4xx answer as a WARN: a client's mistake is not the operator's problem.
#[derive(Clone)]
struct PerRequest<S> {
    name: &'static str,
    service: S,
    timeout: BodyTimeout,
}

impl<S, B> tower_service::Service<warp::http::Request<B>> for PerRequest<S>
where
    S: tower_service::Service<warp::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, mut request: warp::http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let span = super::request_span(self.name, &request);
        request.extensions_mut().insert(self.timeout);
        let future = {
            let _entered = span.enter();
            self.service.call(request)
        };
        future.instrument(span)
    }
}

/// Errors of `accept` that concern one client (it left before we took it),
/// not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection whose automatic parse-error answers (hyper's bare `400`,
/// `414` and `431`) get a JSON body. hyper writes such an answer as one
/// head with `content-length: 0` and closes; the application's own answers
/// to those statuses always have a JSON body, so an empty one is hyper's.
pub struct JsonParseErrors<T> {
    inner: T,
    /// A rewritten answer being written, how much of it is out, and the
    /// length of the original to report once it all is.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> JsonParseErrors<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// The JSON answer to stand in for hyper's empty `head`, if it is one.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let (code, message) = match head.get(..12)? {
        b"HTTP/1.1 400" | b"HTTP/1.0 400" => (
            "bad_request",
            "the request could not be parsed: a malformed request line, URI or \
             header (URIs must be percent-encoded; header names and values are \
             visible ASCII)",
        ),
        b"HTTP/1.1 414" | b"HTTP/1.0 414" => (
            "uri_too_long",
            "the request URI is longer than this server accepts",
        ),
        b"HTTP/1.1 431" | b"HTTP/1.0 431" => (
            "request_header_fields_too_large",
            "the request's headers are larger than this server accepts",
        ),
        _ => return None,
    };
    // The whole write is one head (no body follows an automatic answer).
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != head.len() {
        return None;
    }
    let text = std::str::from_utf8(&head[..end - 2]).ok()?;
    let mut lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    let empty = lines
        .iter()
        .position(|l| l.eq_ignore_ascii_case("content-length: 0"))?;
    lines.remove(empty);
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut answer = lines.join("\r\n");
    answer.push_str(&format!(
        "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    Some(answer.into_bytes())
}

impl<T: AsyncWrite + Unpin> JsonParseErrors<T> {
    /// Writes the pending rewritten answer out; the original's length once done.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        while let Some((answer, written, original)) = &mut self.pending {
            if *written == answer.len() {
                let original = *original;
                self.pending = None;
                return Poll::Ready(Ok(Some(original)));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(None))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonParseErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            match rewrite(buf) {
                Some(answer) => self.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        match ready!(self.poll_pending(cx))? {
            Some(original) => Poll::Ready(Ok(original)),
            None => Pin::new(&mut self.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each head as one buffer, which is
    // what `rewrite` looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const BARE_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
        content-length: 0\r\nconnection: close\r\ndate: Mon, 07 Dec 2026 23:00:00 GMT\r\n\r\n";

    #[tokio::test]
    async fn hypers_bare_error_answers_get_a_json_body() {
        let mut written = Vec::new();
        let mut io = JsonParseErrors::new(&mut written);
        let n = io.write(BARE_431).await.unwrap();
        assert_eq!(n, BARE_431.len(), "reports the original as written");
        io.flush().await.unwrap();
        let text = String::from_utf8(written).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "request_header_fields_too_large");
        assert!(json["message"].is_string());
    }

    #[test]
    fn the_applications_own_answers_pass_unchanged() {
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
            content-length: 40\r\n\r\n";
        assert!(rewrite(own).is_none(), "has a body");
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nx";
        assert!(rewrite(with_body).is_none(), "not a lone head");
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite(ok).is_none());
        assert!(rewrite(b"HTTP/1.1 4").is_none());
    }

    #[test]
    fn each_automatic_status_has_its_code() {
        for (status, code) in [
            ("400 Bad Request", "bad_request"),
            ("414 URI Too Long", "uri_too_long"),
        ] {
            let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let answer = String::from_utf8(rewrite(head.as_bytes()).unwrap()).unwrap();
            assert!(
                answer.contains(&format!("\"error\":\"{code}\"")),
                "{answer}"
            );
        }
    }
}
