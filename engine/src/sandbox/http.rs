//! Outbound HTTP for tasks: the host side of `wasi:http/outgoing-handler`.
//!
//! A task's request reaches the network only through
//! [`HttpHooks::send_request`], which Cairn implements itself instead of
//! wasmtime-wasi-http's default sender (that one connects wherever DNS
//! points, with 600 s timeouts). Here a request is sent only when:
//! - one of the step's [`HttpGrant`]s allows its scheme, host, port and
//!   method, taken from the request URI (never from a `Host` header, which
//!   is set here from that URI);
//! - the attempt has requests left under its [`HttpLimits`];
//! - the address actually connected to passes [`HttpGrant::may_connect`]:
//!   names are resolved here, each address is checked, and the socket is
//!   opened to the checked address, so DNS rebinding has no gap between
//!   check and use.
//!
//! Redirects are never followed here: a 3xx goes back to the task, and a
//! request it sends to the new location is checked like any other.
//! Bytes sent and received are counted across the attempt, and the connect,
//! first-byte and between-bytes waits are bounded; all of it also lies
//! within the attempt's own deadline (the sandbox stops the whole call).
//!
//! The first refusal or limit an attempt hits is kept ([`HttpFault`]): a
//! task that then fails is classified by it (`denied`, `http-limit`), not by
//! how the task reported the error it was handed.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::http_grant::{HttpGrant, Request, RequestHost, Scheme};
use super::limits::ByteSize;

/// What one attempt may spend on outbound HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HttpLimits {
    /// Requests sent (refused ones are not counted).
    pub requests: u32,
    /// Response body bytes received, over all requests.
    pub received: ByteSize,
    /// Request body bytes sent, over all requests.
    pub sent: ByteSize,
    /// Longest wait to connect (DNS, TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest wait from sending a request to its response's head.
    pub first_byte_timeout: Duration,
    /// Longest silence while a response body streams.
    pub between_bytes_timeout: Duration,
}

impl HttpLimits {
    pub const DEFAULT: HttpLimits = HttpLimits {
        requests: 1000,
        received: ByteSize::mib(64),
        sent: ByteSize::mib(16),
        connect_timeout: Duration::from_secs(10),
        first_byte_timeout: Duration::from_secs(30),
        between_bytes_timeout: Duration::from_secs(30),
    };
}

impl Default for HttpLimits {
    /// 1000 requests, 64 MiB received, 16 MiB sent, 10 s to connect, 30 s
    /// to the first byte, 30 s between bytes. What is received is also held
    /// in memory until the attempt ends (it is recorded), so `received`
    /// bounds that too.
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why an attempt's HTTP stopped short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFault {
    /// A request no grant allows, or an address a grant may not reach.
    Denied(String),
    /// A limit of [`HttpLimits`] was reached.
    Limit(String),
    /// In a replay: a request that is not the one the recorded run sent.
    Replay(String),
}

/// Resolves host names for outbound requests. The system resolver in
/// production; a test gives a fixed table to make a name point anywhere.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The operating system's resolver (through tokio).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// One request a task sent and the response it got: what a replay serves
/// back, in order, instead of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub method: String,
    /// The URL as sent, query included.
    pub url: String,
    /// blake3 over the method, the URL, the task's headers and the body.
    pub request: blake3::Hash,
    pub response: Recorded,
}

/// A response as the task received it: status, headers, and the body bytes
/// it read (all of them, unless it stopped early).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub status: u16,
    /// Names and values; a value that is not visible ASCII is kept lossily.
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Bytes,
}

impl Recorded {
    /// One line of JSON (status, headers), a newline, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("a recorded head always encodes");
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let end = bytes.iter().position(|b| *b == b'\n')?;
        let mut recorded: Recorded = serde_json::from_slice(&bytes[..end]).ok()?;
        recorded.body = Bytes::copy_from_slice(&bytes[end + 1..]);
        Some(recorded)
    }
}

/// An exchange being recorded while its bodies stream.
#[derive(Debug)]
struct Pending {
    method: String,
    url: String,
    headers: blake3::Hash,
    body: blake3::Hasher,
    response: Option<Recorded>,
}

/// What an attempt's HTTP did: counters, what it was refused, and what it
/// sent and received.
#[derive(Debug, Default)]
pub(crate) struct HttpLedger {
    requests: u32,
    sent: u64,
    received: u64,
    /// The first refusal or limit hit.
    fault: Option<HttpFault>,
    /// One line per refused request, for the task's log.
    refused: Vec<String>,
    exchanges: Vec<Pending>,
    /// Requests sent so far in a replay (the next recorded one to serve).
    replayed: usize,
}

type Shared = Arc<Mutex<HttpLedger>>;

fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, HttpLedger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

impl HttpLedger {
    fn deny(&mut self, message: String) -> Error {
        self.refused.push(message.clone());
        self.fault.get_or_insert(HttpFault::Denied(message));
        Error::HttpRequestDenied
    }

    fn limit(&mut self, message: String, error: Error) -> Error {
        self.fault.get_or_insert(HttpFault::Limit(message));
        error
    }
}

/// The `wasi:http` hooks of one attempt.
pub(crate) struct HttpHooks {
    grants: Arc<[HttpGrant]>,
    /// The headers each grant attaches, its secrets filled in (or the name
    /// of a secret that had no value).
    headers: Vec<Result<Vec<(http::HeaderName, http::HeaderValue)>, String>>,
    limits: HttpLimits,
    resolver: Arc<dyn Resolve>,
    ledger: Shared,
    deadline: Instant,
    /// A replay's recorded exchanges: served in order, no network.
    tape: Option<Arc<[Exchange]>>,
    /// Requests of the attempt with a connection open at once (see
    /// [`IN_FLIGHT`]).
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// The most requests one attempt may have in flight (connecting, or with a
/// connection open) at once; the task's further requests wait their turn.
/// Without it one attempt could hold a socket for each of its 1 000
/// requests, and a host's file descriptors are shared by every tenant.
pub const IN_FLIGHT: usize = 16;

/// What an attempt's HTTP came to, once it is over.
#[derive(Debug, Default)]
pub(crate) struct HttpOutcome {
    /// The first refusal, limit or replay mismatch.
    pub fault: Option<HttpFault>,
    /// Every refused request.
    pub refused: Vec<String>,
    /// Every request that got a response, in the order sent.
    pub exchanges: Vec<Exchange>,
}

impl HttpHooks {
    pub(crate) fn new(
        grants: &[HttpGrant],
        secrets: &super::Resolved,
        limits: HttpLimits,
        resolver: Arc<dyn Resolve>,
        deadline: Instant,
        tape: Option<Arc<[Exchange]>>,
    ) -> Self {
        let value = |name: &str| {
            secrets
                .0
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let headers = grants
            .iter()
            .map(|grant| {
                grant
                    .render_headers(value)?
                    .into_iter()
                    .map(|(name, text)| {
                        let value = http::HeaderValue::from_str(&text)
                            .map_err(|_| format!("its value for header {name} cannot be sent"))?;
                        let name = http::HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| format!("header {name} cannot be sent"))?;
                        Ok((name, value))
                    })
                    .collect()
            })
            .collect();
        Self {
            grants: grants.into(),
            headers,
            limits,
            resolver,
            ledger: Shared::default(),
            deadline,
            tape,
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        }
    }

    /// What the attempt's HTTP came to (taken: asked once, at its end).
    pub(crate) fn outcome(&self) -> HttpOutcome {
        let mut ledger = lock(&self.ledger);
        let exchanges = std::mem::take(&mut ledger.exchanges)
            .into_iter()
            .filter_map(|p| {
                Some(Exchange {
                    request: request_hash(&p.method, &p.url, &p.headers, &p.body.finalize()),
                    response: p.response?,
                    method: p.method,
                    url: p.url,
                })
            })
            .collect();
        HttpOutcome {
            fault: ledger.fault.clone(),
            refused: std::mem::take(&mut ledger.refused),
            exchanges,
        }
    }

    /// The grant that allows `request`, counted against the request limit;
    /// or the refusal, recorded.
    fn admit(&self, request: &mut http::Request<WasiBody>) -> Result<(HttpGrant, Target), Error> {
        let mut ledger = lock(&self.ledger);
        let uri = request.uri();
        let shown = shown_url(uri);
        let method = request.method().as_str();
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::Https,
            Some("http") => Scheme::Http,
            _ => {
                return Err(ledger.deny(format!(
                    "{method} {shown}: only http and https requests can be granted"
                )));
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(ledger.deny(format!("{method} {shown}: the request names no host")));
        };
        if authority.as_str().contains('@') {
            return Err(ledger.deny(format!(
                "{method} {shown}: a URL with user information is refused"
            )));
        }
        let port = authority.port_u16().unwrap_or(scheme.default_port());
        let host = RequestHost::parse(authority.host());
        let asked = Request {
            scheme,
            host: host.clone(),
            port,
            method: method.to_owned(),
        };
        let Some(at) = self.grants.iter().position(|g| g.allows(&asked)) else {
            let what = format!("{}://{}:{port}", scheme.as_str(), authority.host());
            return Err(ledger.deny(if self.grants.is_empty() {
                format!(
                    "{method} {shown}: the step has no http grant; grant it with \
                     `grants = {{ http = [\"{what}\"] }}` (or --allow-http {what})"
                )
            } else {
                format!(
                    "{method} {shown}: {what} is not granted to this step (http grants: {})",
                    self.grants
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }));
        };
        let grant = &self.grants[at];
        let attach = match &self.headers[at] {
            Ok(headers) => headers,
            Err(secret) => {
                return Err(ledger.deny(format!(
                    "{method} {shown}: the grant's headers need secret {secret}, which has no usable value"
                )));
            }
        };
        if ledger.requests >= self.limits.requests {
            return Err(ledger.limit(
                format!(
                    "{method} {shown}: the attempt already sent {} requests (http_limits.requests)",
                    self.limits.requests
                ),
                Error::ConnectionLimitReached,
            ));
        }
        ledger.requests += 1;
        let exchange = ledger.exchanges.len();
        // Hashed before the host's own headers go on: a recording holds
        // nothing of a secret.
        ledger.exchanges.push(Pending {
            method: method.to_owned(),
            url: uri.to_string(),
            headers: headers_hash(request.headers()),
            body: blake3::Hasher::new(),
            response: None,
        });
        let name = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let shown = format!("{method} {shown}");
        for (header, value) in attach {
            request.headers_mut().insert(header.clone(), value.clone());
        }
        Ok((
            grant.clone(),
            Target {
                scheme,
                host,
                name,
                port,
                shown,
                exchange,
            },
        ))
    }
}

/// blake3 of the task's headers, sorted (the host sets `Host` itself).
fn headers_hash(headers: &http::HeaderMap) -> blake3::Hash {
    let mut pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .filter(|(name, _)| **name != http::header::HOST)
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    pairs.sort();
    let mut hasher = blake3::Hasher::new_derive_key("cairn http request headers v1");
    for (name, value) in pairs {
        for part in [name.as_bytes(), value] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    hasher.finalize()
}

/// What identifies a request for replay: method, URL, headers and body.
fn request_hash(
    method: &str,
    url: &str,
    headers: &blake3::Hash,
    body: &blake3::Hash,
) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_derive_key("cairn http request v1");
    for part in [
        method.as_bytes(),
        url.as_bytes(),
        headers.as_bytes(),
        body.as_bytes(),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize()
}

/// Where a request goes, as its URI says.
struct Target {
    scheme: Scheme,
    host: RequestHost,
    /// The host as written (without IPv6 brackets): what TLS verifies.
    name: String,
    port: u16,
    /// `METHOD url` for messages (no query: it may hold tokens).
    shown: String,
    /// Its place in the attempt's exchanges.
    exchange: usize,
}

/// `scheme://authority/path` of `uri`, without its query.
fn shown_url(uri: &http::Uri) -> String {
    let mut shown = String::new();
    if let Some(scheme) = uri.scheme_str() {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        shown.push_str(authority.host());
        if let Some(port) = authority.port() {
            shown.push(':');
            shown.push_str(port.as_str());
        }
    }
    shown.push_str(uri.path());
    shown
}

/// A response, and what drives the rest of its connection (or its error).
type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

type ResponseFuture = Box<dyn Future<Output = Sent> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        let mut request = request;
        let admitted = self.admit(&mut request);
        let limits = narrowed(self.limits, options);
        let (resolver, ledger, deadline) =
            (self.resolver.clone(), self.ledger.clone(), self.deadline);
        if let Some(tape) = &self.tape {
            // Its place on the tape is the order the task sent it in, taken
            // now: the futures of requests in flight together may run in
            // any order.
            let position = admitted.as_ref().ok().map(|_| {
                let mut ledger = lock(&self.ledger);
                ledger.replayed += 1;
                ledger.replayed - 1
            });
            let tape = tape.clone();
            return Box::new(async move {
                let (_, target) = admitted?;
                let position = position.unwrap_or_default();
                replay(request, target, position, limits, &tape, ledger).await
            });
        }
        let in_flight = self.in_flight.clone();
        Box::new(async move {
            let (grant, target) = admitted?;
            // Held until the response is read whole and its socket closed.
            let _turn = in_flight
                .acquire_owned()
                .await
                .map_err(|_| Error::InternalError(Some("the attempt is over".into())))?;
            send(request, &grant, target, limits, resolver, ledger, deadline).await
        })
    }
}

/// `limits` with any shorter timeout the task asked for.
fn narrowed(mut limits: HttpLimits, options: Option<RequestOptions>) -> HttpLimits {
    if let Some(o) = options {
        let min = |ours: &mut Duration, theirs: Option<Duration>| {
            if let Some(t) = theirs {
                *ours = (*ours).min(t);
            }
        };
        min(&mut limits.connect_timeout, o.connect_timeout);
        min(&mut limits.first_byte_timeout, o.first_byte_timeout);
        min(&mut limits.between_bytes_timeout, o.between_bytes_timeout);
    }
    limits
}

/// The TLS client configuration: webpki's roots, ring, certificates verified.
fn tls() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::InternalError(Some(format!("cannot set up TLS: {e}"))))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Resolve, check, connect, and send one admitted request.
async fn send(
    mut request: http::Request<WasiBody>,
    grant: &HttpGrant,
    target: Target,
    limits: HttpLimits,
    resolver: Arc<dyn Resolve>,
    ledger: Shared,
    deadline: Instant,
) -> Sent {
    let connect_by = (Instant::now() + limits.connect_timeout).min(deadline);
    let connect_timeout = || {
        lock(&ledger).limit(
            format!(
                "{}: no connection within {} (http_limits.connect_timeout)",
                target.shown,
                humantime::format_duration(limits.connect_timeout)
            ),
            Error::ConnectionTimeout,
        )
    };
    let stream = tokio::time::timeout_at(connect_by.into(), async {
        let addrs = match &target.host {
            RequestHost::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
            RequestHost::Name(name) => {
                resolver
                    .resolve(name, target.port)
                    .await
                    .map_err(|_| Error::DnsError {
                        rcode: Some("lookup failed".into()),
                        info_code: None,
                    })?
            }
        };
        let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.into_iter().partition(|a| grant.may_connect(a.ip()));
        if allowed.is_empty() {
            if refused.is_empty() {
                return Err(Error::DestinationNotFound);
            }
            let ips: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
            lock(&ledger).deny(format!(
                "{}: {} resolves to {}, which is not on the public internet; only a grant \
                 naming that address itself (e.g. http://{}:{}) may reach it",
                target.shown,
                target.name,
                ips.join(", "),
                display_ip(refused[0].ip()),
                target.port
            ));
            return Err(Error::DestinationIpProhibited);
        }
        let mut last = None;
        for addr in allowed {
            // The socket goes to this checked address, never to a name.
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let stream: Box<dyn Stream> = match target.scheme {
                        Scheme::Http => Box::new(tcp),
                        Scheme::Https => {
                            let name = rustls::pki_types::ServerName::try_from(target.name.clone())
                                .map_err(|_| Error::TlsCertificateError)?;
                            let tls = tokio_rustls::TlsConnector::from(tls()?)
                                .connect(name, tcp)
                                .await
                                .map_err(Error::Tls)?;
                            Box::new(tls)
                        }
                    };
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Connect(
            last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
        ))
    })
    .await
    .map_err(|_| connect_timeout())??;
    let (mut sender, conn) = tokio::time::timeout_at(
        connect_by.into(),
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| connect_timeout())??;

    // The request line carries the path only; the host is the URI's.
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let host = http::HeaderValue::from_str(&authority).map_err(|_| Error::HttpRequestUriInvalid)?;
    request.headers_mut().insert(http::header::HOST, host);
    let request = request.map(|body| {
        Counted {
            inner: body,
            ledger: ledger.clone(),
            direction: Direction::Sent(limits.sent.bytes()),
            idle: None,
            shown: target.shown.clone(),
            exchange: target.exchange,
        }
        .boxed_unsync()
    });

    let first_byte_by = (Instant::now() + limits.first_byte_timeout).min(deadline);
    let mut conn = Box::pin(conn);
    let respond = sender.send_request(request);
    tokio::pin!(respond);
    let response = tokio::time::timeout_at(
        first_byte_by.into(),
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = respond.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Error::from));
            }
            // Drive the connection until the response head arrives.
            match conn.as_mut().poll(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(Error::from(e))),
                _ => Poll::Pending,
            }
        }),
    )
    .await
    .map_err(|_| {
        lock(&ledger).limit(
            format!(
                "{}: no response within {} (http_limits.first_byte_timeout)",
                target.shown,
                humantime::format_duration(limits.first_byte_timeout)
            ),
            Error::ConnectionReadTimeout,
        )
    })??;

    let remaining = limits
        .received
        .bytes()
        .saturating_sub(lock(&ledger).received);
    if let Some(length) = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && length > remaining
    {
        return Err(lock(&ledger).limit(
            format!(
                "{}: the response is {} and the attempt may receive {} more (http_limits.received = {})",
                target.shown,
                ByteSize(length),
                ByteSize(remaining),
                limits.received
            ),
            Error::HttpResponseBodySize(Some(length)),
        ));
    }
    lock(&ledger).exchanges[target.exchange].response = Some(Recorded {
        status: response.status().as_u16(),
        headers: recorded_headers(response.headers()),
        body: Bytes::new(),
    });
    let idle = limits.between_bytes_timeout;
    // The body is read here, whole, while the connection is driven, and
    // handed to the task from memory: it is held for the recording anyway
    // (bounded by `received`), and the task's reads then wait on no other
    // task of the runtime.
    drop(sender);
    let (parts, body) = response.into_parts();
    let body = Counted {
        inner: body.map_err(Error::from),
        ledger: ledger.clone(),
        direction: Direction::Received(limits.received.bytes(), limits.received),
        idle: Some((idle, Box::pin(tokio::time::sleep(idle)))),
        shown: target.shown.clone(),
        exchange: target.exchange,
    };
    let read = async {
        let (collected, _) = tokio::join!(body.collect(), conn);
        collected
    };
    let bytes = tokio::time::timeout_at(deadline.into(), read)
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??
        .to_bytes();
    // One buffer for the task and the recording.
    if let Some(Some(response)) = lock(&ledger)
        .exchanges
        .get_mut(target.exchange)
        .map(|p| p.response.as_mut())
    {
        response.body = bytes.clone();
    }
    let body = http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok((
        http::Response::from_parts(parts, body),
        Box::new(std::future::ready(Ok(()))),
    ))
}

fn display_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

enum Direction {
    /// Request bytes, with the attempt's cap.
    Sent(u64),
    /// Response bytes, with the attempt's cap (and as written).
    Received(u64, ByteSize),
}

/// A body whose bytes are counted against the attempt's caps, and (for a
/// response) whose silences are bounded.
struct Counted<B> {
    inner: B,
    ledger: Shared,
    direction: Direction,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    shown: String,
    /// The exchange whose bytes these are.
    exchange: usize,
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes, Error = Error> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, |d| d.len() as u64);
                let mut ledger = lock(&this.ledger);
                let over = match this.direction {
                    Direction::Sent(cap) => {
                        ledger.sent += size;
                        if let (Some(data), Some(pending)) =
                            (frame.data_ref(), ledger.exchanges.get_mut(this.exchange))
                        {
                            pending.body.update(data);
                        }
                        (ledger.sent > cap).then(|| {
                            ledger.limit(
                                format!(
                                    "{}: request bodies passed {} (http_limits.sent)",
                                    this.shown,
                                    ByteSize(cap)
                                ),
                                Error::HttpRequestBodySize(Some(cap)),
                            )
                        })
                    }
                    Direction::Received(cap, written) => {
                        ledger.received += size;
                        (ledger.received > cap).then(|| {
                            ledger.limit(
                                format!(
                                    "{}: responses passed {written} (http_limits.received)",
                                    this.shown
                                ),
                                Error::HttpResponseBodySize(Some(cap)),
                            )
                        })
                    }
                };
                drop(ledger);
                if let Some(error) = over {
                    return Poll::Ready(Some(Err(error)));
                }
                if let Some((idle, sleep)) = this.idle.as_mut() {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if let Some((idle, sleep)) = this.idle.as_mut()
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    let idle = *idle;
                    return Poll::Ready(Some(Err(lock(&this.ledger).limit(
                        format!(
                            "{}: the response body was silent for {} (http_limits.between_bytes_timeout)",
                            this.shown,
                            humantime::format_duration(idle)
                        ),
                        Error::ConnectionReadTimeout,
                    ))));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Header names and values as recorded.
fn recorded_headers(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Serve a replayed request from the tape: the request must be the one the
/// recorded run sent at this point (method, URL, headers and body).
async fn replay(
    request: http::Request<WasiBody>,
    target: Target,
    position: usize,
    limits: HttpLimits,
    tape: &[Exchange],
    ledger: Shared,
) -> Sent {
    // The body is read whole (within the sent limit) to compare it.
    let body = Counted {
        inner: request.into_body(),
        ledger: ledger.clone(),
        direction: Direction::Sent(limits.sent.bytes()),
        idle: None,
        shown: target.shown.clone(),
        exchange: target.exchange,
    };
    body.collect().await?;
    let mut ledger = lock(&ledger);
    let pending = &ledger.exchanges[target.exchange];
    let sent = request_hash(
        &pending.method,
        &pending.url,
        &pending.headers,
        &pending.body.finalize(),
    );
    let number = position + 1;
    let recorded = match tape.get(position) {
        None => {
            let message = format!(
                "replay mismatch: request {number}, {}, was not sent by the recorded run \
                 (it sent {} requests); replay with --live to use the network",
                target.shown,
                tape.len()
            );
            ledger.fault.get_or_insert(HttpFault::Replay(message));
            return Err(Error::HttpRequestDenied);
        }
        Some(recorded) if recorded.request != sent => {
            let what = if recorded.method == pending.method && recorded.url == pending.url {
                "the same URL with other headers or another body".to_owned()
            } else {
                format!("{} {}", recorded.method, recorded.url)
            };
            let message = format!(
                "replay mismatch: request {number} is {} {}, the recorded run sent {what}",
                pending.method, pending.url
            );
            ledger.fault.get_or_insert(HttpFault::Replay(message));
            return Err(Error::HttpRequestDenied);
        }
        Some(recorded) => recorded.response.clone(),
    };
    ledger.received += recorded.body.len() as u64;
    ledger.exchanges[target.exchange].response = Some(recorded.clone());
    drop(ledger);
    let mut response = http::Response::builder().status(recorded.status);
    for (name, value) in &recorded.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    let body = http_body_util::Full::new(recorded.body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let response = response
        .body(body)
        .map_err(|e| Error::InternalError(Some(format!("a recorded response: {e}"))))?;
    Ok((response, Box::new(std::future::ready(Ok(())))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_response_reads_back_byte_for_byte() {
        let recorded = Recorded {
            status: 206,
            headers: vec![("content-type".into(), "application/octet-stream".into())],
            body: Bytes::from_static(b"\n\0binary\nbody\xff"),
        };
        assert_eq!(Recorded::decode(&recorded.encode()), Some(recorded));
        assert_eq!(Recorded::decode(b"no head line"), None);
        assert_eq!(Recorded::decode(b"{\"status\": \"x\"}\nbody"), None);
    }

    #[test]
    fn a_request_is_identified_by_method_url_headers_and_body() {
        let mut headers = http::HeaderMap::new();
        headers.insert("accept", http::HeaderValue::from_static("application/json"));
        headers.insert("x-b", http::HeaderValue::from_static("2"));
        let mut reordered = http::HeaderMap::new();
        reordered.insert("x-b", http::HeaderValue::from_static("2"));
        reordered.insert("accept", http::HeaderValue::from_static("application/json"));
        // The host's own Host header is not the task's.
        reordered.insert(
            http::header::HOST,
            http::HeaderValue::from_static("elsewhere"),
        );
        assert_eq!(headers_hash(&headers), headers_hash(&reordered));
        let (h, body) = (headers_hash(&headers), blake3::hash(b""));
        let base = request_hash("GET", "http://a/x", &h, &body);
        assert_ne!(base, request_hash("POST", "http://a/x", &h, &body));
        assert_ne!(base, request_hash("GET", "http://a/y", &h, &body));
        assert_ne!(
            base,
            request_hash("GET", "http://a/x", &blake3::hash(b"h"), &body)
        );
        assert_ne!(
            base,
            request_hash("GET", "http://a/x", &h, &blake3::hash(b"b"))
        );
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    /// 40 requests sent at once by one attempt reach a loopback server
    /// [`IN_FLIGHT`] at a time: with that many held by the server, the rest
    /// wait for a turn; every one is answered once the server lets go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_has_at_most_sixteen_requests_in_flight() {
        #[derive(Clone, Default)]
        struct Server {
            /// Requests being handled now, and the most at once.
            now: Arc<tokio::sync::watch::Sender<(usize, usize)>>,
            release: Arc<tokio::sync::watch::Sender<bool>>,
        }
        let server = Server::default();
        let seen = server.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let server = seen.clone();
                async move {
                    server.now.send_modify(|(now, most)| {
                        *now += 1;
                        *most = (*most).max(*now);
                    });
                    let _ = server.release.subscribe().wait_for(|go| *go).await;
                    server.now.send_modify(|(now, _)| *now -= 1);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let grant = HttpGrant::parse(&format!("http://{addr}"), None).unwrap();
        let mut hooks = HttpHooks::new(
            &[grant],
            &super::super::Resolved::default(),
            HttpLimits::DEFAULT,
            Arc::new(SystemResolver),
            Instant::now() + Duration::from_secs(60),
            None,
        );
        let sent: Vec<_> = (0..40)
            .map(|_| {
                let request = http::Request::get(format!("http://{addr}/"))
                    .body(
                        http_body_util::Empty::<Bytes>::new()
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    )
                    .unwrap();
                tokio::spawn(Box::into_pin(hooks.send_request(
                    request,
                    None,
                    Box::new(std::future::ready(Ok(()))),
                )))
            })
            .collect();
        let patience = Duration::from_secs(60);
        tokio::time::timeout(
            patience,
            server
                .now
                .subscribe()
                .wait_for(|(now, _)| *now == IN_FLIGHT),
        )
        .await
        .expect("the server never held 16 requests")
        .unwrap();
        // The other 24 wait for a turn: no turn is free.
        assert_eq!(hooks.in_flight.available_permits(), 0);
        server.release.send_replace(true);
        for handle in sent {
            let (response, _) = tokio::time::timeout(patience, handle)
                .await
                .expect("every request is answered")
                .unwrap()
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        assert_eq!(server.now.borrow().1, IN_FLIGHT, "the most at once");
    }
}
