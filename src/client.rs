//! A Flight SQL client for the coordinator, over mutual TLS: what `samkor
//! query`, the demo and the tests use. Any Flight SQL client works the same way.

use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use samkor_proto::headers;
use samkor_proto::tls::TlsIdentity;
use tonic::transport::{Channel, Endpoint};

/// Why a call to the coordinator failed: the coordinator's own message where
/// it gave one.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid coordinator address {addr}: {reason}")]
    Address { addr: String, reason: String },
    #[error("cannot reach the coordinator at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{message}")]
    Refused { code: tonic::Code, message: String },
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC code of a refusal or error reported by the coordinator.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            ClientError::Address { .. } | ClientError::Connect { .. } | ClientError::Protocol(_) => None,
        }
    }
}

fn from_flight(e: FlightError) -> ClientError {
    match e {
        FlightError::Tonic(s) => from_status(*s),
        FlightError::Arrow(arrow::error::ArrowError::ExternalError(inner)) => match inner.downcast::<tonic::Status>() {
            Ok(s) => from_status(*s),
            Err(other) => ClientError::Protocol(other.to_string()),
        },
        other => ClientError::Protocol(other.to_string()),
    }
}

fn from_status(s: tonic::Status) -> ClientError {
    // The connection failed under the call (the coordinator did not answer): tonic's
    // message is only "transport error" or "operation was canceled".
    if std::error::Error::source(&s).is_some_and(|e| e.is::<tonic::transport::Error>()) {
        let chain = std::error::Error::source(&s).map(source_chain).unwrap_or_else(|| format!("{:?}", s.code()));
        return ClientError::Refused { code: s.code(), message: explain_transport(&chain) };
    }
    ClientError::Refused { code: s.code(), message: s.message().to_owned() }
}

/// What a failed connection means for the user, and what to check.
fn explain_transport(chain: &str) -> String {
    let hint = if chain.contains("Connection refused") {
        "nothing accepts connections there: is the coordinator running, and is this its `listen` address (host:port)?"
    } else if chain.contains("invalid peer certificate") && chain.contains("NotValidForName") {
        "the coordinator's certificate is not issued for this host name; connect by the name or address its certificate carries"
    } else if chain.contains("invalid peer certificate") {
        "the coordinator's certificate is not signed by your CA file (--ca / SAMKOR_CA): use the federation's ca.pem"
    } else if ["alert", "connection reset", "broken pipe", "connection closed"].iter().any(|c| chain.contains(c)) {
        "the coordinator closed the connection during the TLS handshake: it does not accept your certificate \
         (--cert / SAMKOR_CERT); use one issued by the federation's CA"
    } else if chain.contains("timed out") || chain.contains("deadline") {
        "no answer in time: check the address and that no firewall is in between"
    } else {
        ""
    };
    let detail = chain.strip_prefix("transport error: ").unwrap_or(chain);
    match hint {
        "" => detail.to_owned(),
        hint => format!("{hint} ({detail})"),
    }
}

/// A connection to a coordinator for one project.
#[derive(Debug, Clone)]
pub struct Client {
    inner: FlightSqlServiceClient<Channel>,
}

impl Client {
    /// Connects to `addr` (`host:port`) presenting `identity`; `project` is sent with every call.
    pub async fn connect(addr: &str, identity: &TlsIdentity, project: &str) -> Result<Client, ClientError> {
        samkor_proto::tls::install_crypto_provider();
        let addr_err = |reason: String| ClientError::Address { addr: addr.to_owned(), reason };
        let Some((host, _port)) = addr.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()) else {
            return Err(addr_err("expected HOST:PORT, e.g. 127.0.0.1:47100".into()));
        };
        let host = host.trim_matches(['[', ']']);
        let domain = if host.parse::<std::net::IpAddr>().is_ok() { "localhost" } else { host };
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| addr_err(e.to_string()))?
            .tls_config(identity.client_config(domain))
            .map_err(|e| addr_err(e.to_string()))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| ClientError::Connect {
                addr: addr.to_owned(),
                reason: explain_transport(&source_chain(&e)),
            })?;
        let mut inner = FlightSqlServiceClient::new(channel);
        inner.set_header(headers::PROJECT, project);
        Ok(Client { inner })
    }

    /// Runs a query and returns a stream of its record batches.
    pub async fn query_stream(&mut self, sql: &str) -> Result<FlightRecordBatchStream, ClientError> {
        let info = self.inner.execute(sql.to_owned(), None).await.map_err(from_flight)?;
        let ticket = info
            .endpoint
            .first()
            .and_then(|e| e.ticket.clone())
            .ok_or_else(|| ClientError::Protocol("the coordinator returned no ticket".into()))?;
        self.inner.do_get(ticket).await.map_err(from_flight)
    }

    /// Runs a query and collects its result.
    pub async fn query(&mut self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), ClientError> {
        let mut stream = self.query_stream(sql).await?;
        let mut batches = Vec::new();
        while let Some(b) = stream.try_next().await.map_err(from_flight)? {
            batches.push(b);
        }
        let schema = stream.schema().cloned().or_else(|| batches.first().map(|b| b.schema()));
        let schema = schema.unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
        Ok((schema, batches))
    }

    /// The underlying Flight SQL client (catalogue calls, prepared statements).
    pub fn flight_sql(&mut self) -> &mut FlightSqlServiceClient<Channel> {
        &mut self.inner
    }

    /// Maps an error from a stream returned by [`Client::query_stream`].
    pub fn stream_error(e: FlightError) -> ClientError {
        from_flight(e)
    }
}

/// An error and its causes on one line, each said once (tonic and hyper repeat their causes).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}
