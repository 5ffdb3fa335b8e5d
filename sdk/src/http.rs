//! A small HTTP client for tasks, over `wasi:http/outgoing-handler`.
//!
//! ```ignore
//! use cairn_sdk::http;
//!
//! let page: Page = http::get("https://api.example.com/items?page=1")
//!     .header("accept", "application/json")
//!     .send()?            // HttpError converts into TaskError
//!     .error_for_status()?
//!     .json()?;
//! ```
//!
//! A request reaches only hosts the step grants (`grants = { http = [...] }`);
//! any other is refused by the host, and [`HttpError::Denied`] says so. The
//! host never follows redirects: a 3xx comes back as it is, and a request to
//! its `location` is checked like any other.
//!
//! Only on `wasm32` targets (the host has nothing to send through).

use std::io::Read;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

use crate::{ErrorKind, TaskError};

/// Why a request got no response (or its body could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the request: its host, port, scheme or method is not
    /// granted to the step, or its name resolves to a private address.
    Denied(String),
    /// One of the step's HTTP limits was reached (requests, bytes, a wait).
    Limit(String),
    /// The URL cannot be sent (no scheme or host, or a bad header).
    Invalid(String),
    /// The network or the server failed (refused, reset, TLS, DNS).
    Network(String),
    /// The response body is not what was asked for (not UTF-8, not JSON).
    Body(String),
    /// The server answered with an error status (from [`Response::error_for_status`]).
    Status { status: u16, url: String },
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied(m) => write!(f, "denied: {m}"),
            HttpError::Limit(m) => write!(f, "http limit: {m}"),
            HttpError::Invalid(m) => write!(f, "invalid request: {m}"),
            HttpError::Network(m) => write!(f, "network: {m}"),
            HttpError::Body(m) => write!(f, "response body: {m}"),
            HttpError::Status { status, url } => write!(f, "{url} answered {status}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for TaskError {
    /// Denied stays denied; network failures, limits and 5xx/429 are worth
    /// a retry; the rest is fatal.
    fn from(error: HttpError) -> Self {
        let kind = match &error {
            HttpError::Denied(_) => ErrorKind::Denied,
            HttpError::Network(_) | HttpError::Limit(_) => ErrorKind::Retryable,
            HttpError::Status { status, .. } if *status >= 500 || *status == 429 => {
                ErrorKind::Retryable
            }
            _ => ErrorKind::Fatal,
        };
        TaskError::new(kind, error.to_string())
    }
}

fn from_code(code: &ErrorCode, url: &str) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => {
            HttpError::Denied(format!("the host refused {url}"))
        }
        ErrorCode::ConnectionLimitReached
        | ErrorCode::HttpResponseBodySize(_)
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout => HttpError::Limit(format!("{url}: {code:?}")),
        ErrorCode::DnsError(_) | ErrorCode::DnsTimeout | ErrorCode::DestinationNotFound => {
            HttpError::Network(format!("{url}: the host name could not be resolved"))
        }
        ErrorCode::ConnectionRefused => {
            HttpError::Network(format!("{url}: the server refused the connection"))
        }
        ErrorCode::TlsCertificateError | ErrorCode::TlsProtocolError => HttpError::Network(
            format!("{url}: TLS failed (is the certificate valid for the host?)"),
        ),
        other => HttpError::Network(format!("{url}: {other:?}")),
    }
}

/// A request being built. Start with [`get`], [`post`] or [`request`].
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

/// A `GET` of `url`.
pub fn get(url: impl Into<String>) -> Request {
    request("GET", url)
}

/// A `POST` to `url` (add a body with [`Request::json`] or [`Request::body`]).
pub fn post(url: impl Into<String>) -> Request {
    request("POST", url)
}

/// A request with any method.
pub fn request(method: &str, url: impl Into<String>) -> Request {
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    };
    Request {
        method,
        url: url.into(),
        headers: Vec::new(),
        body: None,
    }
}

/// `scheme`, `authority` and `path?query` of a URL.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let invalid = |why: &str| HttpError::Invalid(format!("{url}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("write the scheme, e.g. https://"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => return Err(invalid("only http and https are supported")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(invalid("the URL names no host"));
    }
    let path = path.split('#').next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    Ok((scheme, authority, path))
}

impl Request {
    /// Add a header (repeatable; the host sets `Host` from the URL).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Send `value` as a JSON body (and say so in `content-type`).
    pub fn json<T: serde::Serialize>(self, value: &T) -> Result<Self, HttpError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| HttpError::Invalid(format!("the JSON body: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Send these bytes as the body.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Some(bytes.into());
        self
    }

    /// Send the request and wait for the response's head (the body is
    /// read from the [`Response`]).
    pub fn send(self) -> Result<Response, HttpError> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let shown = self.url.split('?').next().unwrap_or(&self.url).to_owned();
        let mut headers = self.headers;
        if let Some(body) = &self.body {
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        let fields = Fields::from_list(&headers)
            .map_err(|e| HttpError::Invalid(format!("{shown}: a header: {e:?}")))?;
        let outgoing = OutgoingRequest::new(fields);
        let invalid = |what: &str| HttpError::Invalid(format!("{shown}: bad {what}"));
        outgoing
            .set_method(&self.method)
            .map_err(|()| invalid("method"))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        outgoing
            .set_authority(Some(authority))
            .map_err(|()| invalid("host"))?;
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|()| invalid("path"))?;
        let body = match &self.body {
            Some(_) => Some(outgoing.body().map_err(|()| invalid("body"))?),
            None => None,
        };
        let pending =
            outgoing_handler::handle(outgoing, None).map_err(|c| from_code(&c, &shown))?;
        if let (Some(out), Some(bytes)) = (body, &self.body) {
            {
                let stream = out.write().map_err(|()| invalid("body"))?;
                for chunk in bytes.chunks(4096) {
                    stream
                        .blocking_write_and_flush(chunk)
                        .map_err(|e| stream_error(e, &shown))?;
                }
            }
            OutgoingBody::finish(out, None).map_err(|c| from_code(&c, &shown))?;
        }
        let response = loop {
            match pending.get() {
                Some(result) => break result,
                None => pending.subscribe().block(),
            }
        };
        let response = response
            .map_err(|()| HttpError::Network(format!("{shown}: the response was taken twice")))?
            .map_err(|c| from_code(&c, &shown))?;
        Response::new(response, shown)
    }
}

fn stream_error(error: StreamError, url: &str) -> HttpError {
    match error {
        StreamError::Closed => HttpError::Network(format!("{url}: the stream closed early")),
        StreamError::LastOperationFailed(e) => match wasip2::http::types::http_error_code(&e) {
            Some(code) => from_code(&code, url),
            None => HttpError::Network(format!("{url}: {}", e.to_debug_string())),
        },
    }
}

/// A response: status and headers now, the body as it streams.
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    url: String,
    body: BodyReader,
}

impl Response {
    fn new(response: IncomingResponse, url: String) -> Result<Self, HttpError> {
        let status = response.status();
        let headers = response.headers().entries();
        let body = response
            .consume()
            .map_err(|()| HttpError::Network(format!("{url}: the body was taken twice")))?;
        let stream = body
            .stream()
            .map_err(|()| HttpError::Network(format!("{url}: the body was taken twice")))?;
        Ok(Self {
            status,
            headers,
            body: BodyReader {
                stream: Some(stream),
                _body: body,
                _response: response,
                url: url.clone(),
            },
            url,
        })
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// This response, or [`HttpError::Status`] for a 4xx or 5xx.
    pub fn error_for_status(self) -> Result<Self, HttpError> {
        if self.status >= 400 {
            return Err(HttpError::Status {
                status: self.status,
                url: self.url,
            });
        }
        Ok(self)
    }

    /// The body as it streams (implements [`std::io::Read`]).
    pub fn reader(&mut self) -> &mut BodyReader {
        &mut self.body
    }

    /// The whole body.
    pub fn bytes(mut self) -> Result<Vec<u8>, HttpError> {
        let mut all = Vec::new();
        self.body.read_all(&mut all)?;
        Ok(all)
    }

    /// The whole body as UTF-8 text.
    pub fn text(self) -> Result<String, HttpError> {
        let url = self.url.clone();
        String::from_utf8(self.bytes()?)
            .map_err(|_| HttpError::Body(format!("{url}: the body is not UTF-8")))
    }

    /// The whole body, decoded from JSON.
    pub fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, HttpError> {
        let url = self.url.clone();
        let bytes = self.bytes()?;
        serde_json::from_slice(&bytes)
            .map_err(|e| HttpError::Body(format!("{url}: not the JSON expected: {e}")))
    }
}

/// A response body being read. Its fields drop in order: the stream before
/// the body before the response, as wasi:http requires.
pub struct BodyReader {
    stream: Option<InputStream>,
    _body: IncomingBody,
    _response: IncomingResponse,
    url: String,
}

impl BodyReader {
    /// The next chunk (up to 64 KiB), or `None` at the end.
    pub fn chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        match stream.blocking_read(64 << 10) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StreamError::Closed) => {
                self.stream = None;
                Ok(None)
            }
            Err(e) => {
                self.stream = None;
                Err(stream_error(e, &self.url))
            }
        }
    }

    fn read_all(&mut self, into: &mut Vec<u8>) -> Result<(), HttpError> {
        while let Some(chunk) = self.chunk()? {
            into.extend_from_slice(&chunk);
        }
        Ok(())
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(stream) = &self.stream else {
            return Ok(0);
        };
        loop {
            match stream.blocking_read(buf.len() as u64) {
                // An empty read is not the end; wait for more.
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    return Ok(bytes.len());
                }
                Err(StreamError::Closed) => {
                    self.stream = None;
                    return Ok(0);
                }
                Err(e) => {
                    self.stream = None;
                    return Err(std::io::Error::other(stream_error(e, &self.url)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_and_path() {
        let (s, a, p) = split_url("https://api.example.com:8443/v1/items?page=2#x").unwrap();
        assert!(matches!(s, Scheme::Https));
        assert_eq!((a, p), ("api.example.com:8443", "/v1/items?page=2"));
        let (_, a, p) = split_url("http://127.0.0.1:9000?q=1").unwrap();
        assert_eq!((a, p), ("127.0.0.1:9000", "?q=1"));
        assert!(matches!(split_url("ftp://x/"), Err(HttpError::Invalid(_))));
        assert!(matches!(
            split_url("example.com/x"),
            Err(HttpError::Invalid(_))
        ));
        assert!(matches!(
            split_url("https:///x"),
            Err(HttpError::Invalid(_))
        ));
    }
}
