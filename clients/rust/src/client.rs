//! The connection to a sidecar: target discovery, bearer token, TLS, and a few
//! typed reads. Everything else is on the generated stub ([`RecorderClient::raw`]).

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::delivery::{DeliveryConfig, EventSender};
use crate::error::{ConnectError, RpcError};
use crate::proto::recorder_service_client::RecorderServiceClient;
use crate::proto::{
    AppendRequest, EventEnvelope, GetLoopRequest, GetSessionRequest, LoopRecord, Session,
};
use crate::target::{self, Env};

/// The largest response taken: a whole session with every event can run to hundreds
/// of MB (gRPC's default limit is 4 MiB). The same limit as the Python client's.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

/// How to reach the sidecar. `Default` reads everything from the environment.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `unix:///path`, `unix:/path`, a socket path, or `host:port`;
    /// `$AGENT_RECORDER_TARGET` or the default socket when `None`.
    pub target: Option<String>,
    /// Bearer token; `$AGENT_RECORDER_TOKEN` (or the file `$AGENT_RECORDER_TOKEN_FILE`
    /// names) when `None`; `Some("")` sends none whatever the environment says.
    pub token: Option<String>,
    /// `Some(true)` forces TLS, `Some(false)` forbids it; with `None` TLS is used when
    /// any TLS file is given (here or in `$AGENT_RECORDER_TLS_CA/_CERT/_KEY`).
    pub tls: Option<bool>,
    /// PEM CA that signed the server; the system's roots when absent.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain (mTLS); goes with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM client private key (mTLS); goes with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Deadline of each unary call made by the typed methods (30 s when `None`).
    pub timeout: Option<Duration>,
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl Auth {
    pub(crate) fn apply<T>(&self, request: &mut Request<T>) {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.apply(&mut request);
        Ok(request)
    }
}

/// The generated stub with this client's channel and credentials.
pub type RawClient = RecorderServiceClient<InterceptedService<Channel, Auth>>;

/// A lazily connected client of the recording sidecar; cheap to clone.
///
/// Nothing fails at construction if the sidecar is not up yet: calls fail (and
/// an [`EventSender`] keeps reconnecting) until it is.
#[derive(Debug, Clone)]
pub struct RecorderClient {
    target: std::sync::Arc<str>,
    channel: Channel,
    auth: Auth,
    timeout: Duration,
}

impl RecorderClient {
    /// Dial the sidecar as `options` (and the environment) say.
    ///
    /// Must be called inside a Tokio runtime (the channel's connection task runs there).
    pub fn connect(options: ConnectOptions) -> Result<Self, ConnectError> {
        Self::connect_in(options, &target::process_env)
    }

    /// [`connect`](Self::connect) with the environment read through `env` instead of
    /// the process's (each variable by name; `None` when unset).
    pub fn connect_with_env(
        options: ConnectOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConnectError> {
        Self::connect_in(options, env)
    }

    pub(crate) fn connect_in(options: ConnectOptions, env: Env<'_>) -> Result<Self, ConnectError> {
        let tls = tls_config(&options, env)?;
        let address = options
            .target
            .clone()
            .unwrap_or_else(|| target::default_target_in(env));
        let uri = target::normalize_target(&address, tls.is_some())?;
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|error| ConnectError::Target(format!("{address}: {error}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|error| ConnectError::Tls(error.to_string()))?;
        }
        let token = match options.token {
            Some(token) => Some(token).filter(|token| !token.is_empty()),
            None => target::default_token_in(env)?,
        };
        let header = token
            .map(|token| {
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ConnectError::Target("the token is not valid ASCII".into()))
            })
            .transpose()?;
        Ok(RecorderClient {
            target: address.into(),
            channel: endpoint.connect_lazy(),
            auth: Auth { header },
            timeout: options.timeout.unwrap_or(Duration::from_secs(30)),
        })
    }

    /// The sidecar's address, as given (or the default the environment chose).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The generated stub over this client's channel, carrying its token.
    pub fn raw(&self) -> RawClient {
        RecorderServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(crate) fn auth(&self) -> &Auth {
        &self.auth
    }

    /// A fire-and-forget event sender over one Record stream of this channel.
    ///
    /// Must be called inside a Tokio runtime: its delivery task is spawned there.
    /// Fails (naming the field) when `config` does not pass [`DeliveryConfig::validate`].
    pub fn sender(&self, config: DeliveryConfig) -> Result<EventSender, ConnectError> {
        config.validate().map_err(ConnectError::Config)?;
        Ok(EventSender::new(self.clone(), config))
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A whole session: its loops with messages, turns and events.
    pub async fn get_session(&self, session_id: &str) -> Result<Session, RpcError> {
        let request = self.request(GetSessionRequest {
            session_id: session_id.to_string(),
            ..Default::default()
        });
        let response = self.raw().get_session(request).await?.into_inner();
        response
            .session
            .ok_or_else(|| RpcError::local(tonic::Code::Internal, "GetSession returned no session"))
    }

    /// One loop with its messages, turns and events.
    pub async fn get_loop(&self, loop_id: &str) -> Result<LoopRecord, RpcError> {
        let request = self.request(GetLoopRequest {
            loop_id: loop_id.to_string(),
            skip_events: false,
        });
        let response = self.raw().get_loop(request).await?.into_inner();
        response
            .r#loop
            .ok_or_else(|| RpcError::local(tonic::Code::Internal, "GetLoop returned no loop"))
    }

    /// Store one batch, all or nothing, without retries; returns each event's sequence.
    pub async fn append(
        &self,
        writer_id: &str,
        events: Vec<EventEnvelope>,
    ) -> Result<Vec<u64>, RpcError> {
        let request = self.request(AppendRequest {
            writer_id: writer_id.to_string(),
            events,
        });
        Ok(self.raw().append(request).await?.into_inner().sequences)
    }
}

fn tls_config(
    options: &ConnectOptions,
    env: Env<'_>,
) -> Result<Option<ClientTlsConfig>, ConnectError> {
    let from_env = |name: &str| env(name).map(PathBuf::from);
    let ca = options
        .tls_ca
        .clone()
        .or_else(|| from_env(target::TLS_CA_ENV));
    let cert = options
        .tls_cert
        .clone()
        .or_else(|| from_env(target::TLS_CERT_ENV));
    let key = options
        .tls_key
        .clone()
        .or_else(|| from_env(target::TLS_KEY_ENV));
    if cert.is_some() != key.is_some() {
        return Err(ConnectError::Tls(
            "tls_cert and tls_key go together (mTLS needs both)".into(),
        ));
    }
    let files_given = ca.is_some() || cert.is_some();
    if options.tls == Some(false) && files_given {
        return Err(ConnectError::Tls(
            "tls=false contradicts the TLS files given".into(),
        ));
    }
    if !(options.tls == Some(true) || files_given) {
        return Ok(None);
    }
    let mut config = ClientTlsConfig::new();
    match ca {
        Some(path) => config = config.ca_certificate(Certificate::from_pem(read(&path)?)),
        None => config = config.with_native_roots(),
    }
    if let (Some(cert), Some(key)) = (cert, key) {
        config = config.identity(Identity::from_pem(read(&cert)?, read(&key)?));
    }
    Ok(Some(config))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::File {
        path: path.clone(),
        source,
    })
}
