//! The typed client: one reused channel, deadlines, retries with jittered backoff.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic::{Code, Request, Response, Status};

use crate::pb::{self, ranking_service_client::RankingServiceClient};
use crate::scores::{PhoenixScores, Weights, ACTIONS, XAI_ACTIONS};
use crate::synthetic::SplitMix64;
use crate::xai::{self, recsys_predictor_client::RecsysPredictorClient};

/// Retries for `UNAVAILABLE` and `RESOURCE_EXHAUSTED` only (nothing else is safe or useful to
/// retry), except a `RESOURCE_EXHAUSTED` whose message says a message was larger than the
/// maximum ("Received message larger than max (N vs. M)", matched case-insensitively on
/// "larger than max", the phrase gRPC implementations use): that is a transport's message size
/// limit, which the same request exceeds on every attempt (see [`RetryPolicy::retries`]).
/// The delay before attempt n+1 is uniform in [0, min(max, initial * multiplier^n)]
/// ("full jitter"), and at least the server's `grpc-retry-pushback-ms` hint.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Whether a call that failed with `status` is worth another attempt: `UNAVAILABLE`, and
    /// `RESOURCE_EXHAUSTED` unless it is a message size limit ("... larger than max ...").
    pub fn retries(status: &Status) -> bool {
        match status.code() {
            Code::Unavailable => true,
            Code::ResourceExhausted => !status
                .message()
                .to_ascii_lowercase()
                .contains("larger than max"),
            _ => false,
        }
    }
}

/// TLS for the channel, as the Python client's `ClientTLS` and the binaries' `--tls-*` flags.
/// Every field empty still means TLS, verified with the system's roots (what an `https://`
/// target gets without a `TlsConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM CA certificate(s) that verify the server's certificate (`--tls-ca`); `None`: the
    /// system's roots. Given, it is the only trust: the system's roots are not added.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain of this client, for mutual TLS (`--tls-cert`); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (`--tls-key`).
    pub key: Option<PathBuf>,
    /// The name the server's certificate is checked against, and sent as SNI
    /// (`--tls-server-name`); `None`: the target's host.
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// The TLS of the binaries' flags: `None` (plaintext, unless the target is `https://`)
    /// when none is given, as the Python client decides.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        server_name: Option<String>,
    ) -> Option<TlsConfig> {
        let tls = TlsConfig {
            ca,
            cert,
            key,
            server_name,
        };
        (tls != TlsConfig::default()).then_some(tls)
    }

    /// tonic's configuration, the files read now. Errors name the file or the missing flag.
    fn client_tls_config(&self, handshake_timeout: Duration) -> Result<ClientTlsConfig, String> {
        fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
            std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
        }
        let mut config = ClientTlsConfig::new().timeout(handshake_timeout);
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?)),
            None => config.with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(cert, "--tls-cert")?,
                    read(key, "--tls-key")?,
                ));
            }
            (None, None) => {}
            _ => return Err("a client certificate needs both --tls-cert and --tls-key".into()),
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long `connect` may take to establish the HTTP/2 connection (and TLS handshake).
    pub connect_timeout: Duration,
    /// Deadline of each attempt, sent to the server as `grpc-timeout`.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Weights of [`ScoredCandidate::weighted_score`].
    pub weights: Weights,
    /// TLS (over any target form); `None`: plaintext, except that an `https://` target gets TLS
    /// verified with the system's roots.
    pub tls: Option<TlsConfig>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            weights: Weights::default(),
            tls: None,
        }
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// The target is malformed, or its server could not be reached within the connect timeout.
    Connect {
        /// The target as given, or its normalised URI once it parsed.
        target: String,
        /// Why, with the whole chain of causes (e.g. "... tcp connect error: Connection refused").
        reason: String,
    },
    /// The call failed with this status after `attempts` attempts.
    Status { status: Status, attempts: u32 },
    /// The server answered something that breaks the contract.
    Protocol(String),
}

impl ClientError {
    /// The gRPC status code, for `Status` errors.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect { target, reason } => {
                write!(f, "could not connect to {target}: {reason}")
            }
            ClientError::Status { status, attempts } => {
                write!(f, "{:?}: {}", status.code(), status.message())?;
                // A status the transport made (e.g. the connection closed), not the server's:
                // the cause, which the message alone does not say.
                if let Some(cause) = std::error::Error::source(status) {
                    write!(f, " ({})", describe(cause))?;
                }
                let plural = if *attempts == 1 { "" } else { "s" };
                write!(f, " (after {attempts} attempt{plural})")
            }
            ClientError::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

const TARGET_FORMS: &str = "host:port, [::1]:port, http://host:port or https://host:port";

/// The URI of a server target given in any of the forms the Python client and the binaries take:
/// `host:port` and `[v6-address]:port` (which get the scheme `http://`), `http://host[:port]` and
/// `https://host[:port]`. The result is `scheme://authority` (a trailing `/` is dropped), and
/// normalising it again returns it unchanged.
///
/// ```
/// use phoenix_client::normalize_target;
/// assert_eq!(normalize_target("localhost:50051").unwrap(), "http://localhost:50051");
/// assert_eq!(normalize_target("[::1]:50051").unwrap(), "http://[::1]:50051");
/// assert_eq!(normalize_target("http://10.0.0.1:80/").unwrap(), "http://10.0.0.1:80");
/// assert!(normalize_target("::1:50051").is_err()); // an IPv6 address needs brackets
/// ```
pub fn normalize_target(target: &str) -> Result<String, ClientError> {
    let bad = |why: String| ClientError::Connect {
        target: format!("{target:?}"),
        reason: format!("bad target: {why} (expected {TARGET_FORMS})"),
    };
    let trimmed = target.trim();
    if trimmed.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let (scheme, rest, explicit) = match trimmed.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                return Err(bad(format!("unsupported scheme {scheme:?}")));
            }
            (scheme, rest, true)
        }
        None => ("http".to_string(), trimmed, false),
    };
    let authority_text = rest.split('/').next().unwrap_or("");
    if authority_text.contains('@') {
        return Err(bad("user information is not supported".into()));
    }
    if !authority_text.starts_with('[') && authority_text.matches(':').count() > 1 {
        return Err(bad(
            "an IPv6 address needs brackets, e.g. [::1]:50051".into()
        ));
    }
    let uri: Uri = format!("{scheme}://{rest}")
        .parse()
        .map_err(|e| bad(format!("{e}")))?;
    let authority = uri.authority().ok_or_else(|| bad("no host".into()))?;
    if authority.host().is_empty() || authority.host() == "[]" {
        return Err(bad("no host".into()));
    }
    if !explicit && authority.port_u16().is_none() {
        return Err(bad("no port".into()));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("a path is not supported".into()));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// An error and all its sources, e.g. "transport error: tcp connect error: Connection refused".
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            text = format!("{text}: {part}");
        }
        source = cause.source();
    }
    text
}

/// One HTTP/2 channel to a target in any form [`normalize_target`] takes, connected within
/// `connect_timeout`, in plaintext, or with TLS verified by the system's roots for an `https://`
/// target (see [`channel_with_tls`]). Errors are [`ClientError::Connect`] and name the target.
pub async fn channel(target: &str, connect_timeout: Duration) -> Result<Channel, ClientError> {
    channel_with_tls(target, connect_timeout, None).await
}

/// [`channel`] with TLS: with `tls` given, TLS over any target form (the target's scheme becomes
/// `https://`); without, TLS only for an `https://` target (system roots), plaintext otherwise.
/// The TLS handshake is part of the connection, so an untrusted server certificate is a
/// [`ClientError::Connect`]. A server that refuses this client's certificate (mutual TLS) may
/// only close the connection after the handshake (TLS 1.3): then the first call fails, with
/// the status tonic gives a closed connection (`CANCELLED` or `UNKNOWN`, not retried).
pub async fn channel_with_tls(
    target: &str,
    connect_timeout: Duration,
    tls: Option<&TlsConfig>,
) -> Result<Channel, ClientError> {
    let mut uri = normalize_target(target)?;
    let tls = match (tls, uri.strip_prefix("http://")) {
        (Some(tls), Some(authority)) => {
            uri = format!("https://{authority}");
            Some(tls.clone())
        }
        (Some(tls), None) => Some(tls.clone()),
        (None, _) if uri.starts_with("https://") => Some(TlsConfig::default()),
        (None, _) => None,
    };
    let fail = |reason: String| ClientError::Connect {
        target: uri.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| fail(describe(&e)))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        let config = tls.client_tls_config(connect_timeout).map_err(&fail)?;
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| fail(format!("TLS: {}", describe(&e))))?;
    }
    tokio::time::timeout(connect_timeout, endpoint.connect())
        .await
        .map_err(|_| fail(format!("timed out after {connect_timeout:?}")))?
        .map_err(|e| fail(describe(&e)))
}

/// One ranked candidate.
#[derive(Clone, Debug)]
pub struct ScoredCandidate {
    pub post_id: u64,
    pub author_id: u64,
    /// Log-odds per action, in `ModelInfo.actions` order.
    pub logits: Vec<f32>,
    pub scores: PhoenixScores,
    pub weighted_score: f64,
}

/// A client of one server. Cloning is cheap and shares the underlying HTTP/2 connection.
#[derive(Clone)]
pub struct PhoenixClient {
    stub: RankingServiceClient<Channel>,
    xai: RecsysPredictorClient<Channel>,
    config: ClientConfig,
    info: pb::ModelInfo,
}

fn jitter_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

fn pushback(status: &Status) -> Option<Duration> {
    let value = status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?;
    value.parse::<u64>().ok().map(Duration::from_millis)
}

impl PhoenixClient {
    /// Connects (within `connect_timeout`) and reads the server's `ModelInfo`. `target` is
    /// `host:port`, `[::1]:port`, `http://host:port` or `https://…` (see [`normalize_target`]);
    /// TLS when `config.tls` is given or the target is `https://` (see [`channel_with_tls`]).
    pub async fn connect(target: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let channel = channel_with_tls(target, config.connect_timeout, config.tls.as_ref()).await?;
        Self::from_channel(channel, config).await
    }

    /// A client over a channel made elsewhere, e.g. one that balances calls across every
    /// replica (`Channel::balance_list`, or `Channel::balance_channel` fed by re-resolving a
    /// headless Service; docs/deployment.md), keeping this crate's deadlines and retries.
    /// Reads the server's `ModelInfo` through it. (`config.tls` and `connect_timeout` are the
    /// channel's business here and are not used.)
    pub async fn from_channel(channel: Channel, config: ClientConfig) -> Result<Self, ClientError> {
        let stub = RankingServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let xai = RecsysPredictorClient::new(channel).max_decoding_message_size(64 << 20);
        let mut client = PhoenixClient {
            stub,
            xai,
            config,
            info: pb::ModelInfo::default(),
        };
        client.info = client
            .with_retry(
                &client.stub,
                |mut stub, request| async move { stub.get_model_info(request).await },
                pb::GetModelInfoRequest {},
            )
            .await?;
        Ok(client)
    }

    /// What the server said about its model when we connected.
    pub fn model_info(&self) -> &pb::ModelInfo {
        &self.info
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends a request as is (with deadline and retries) and returns the raw response.
    pub async fn rank_request(
        &self,
        request: pb::RankRequest,
    ) -> Result<pb::RankResponse, ClientError> {
        self.with_retry(
            &self.stub,
            |mut stub, request| async move { stub.rank(request).await },
            request,
        )
        .await
    }

    /// xAI's `PredictNextActions` (the request as is, with deadline and retries): the server
    /// answers it beside `Rank`, as xAI's home-mixer calls it (docs/xai-compat.md).
    pub async fn predict_next_actions(
        &self,
        request: xai::PredictNextActionsRequest,
    ) -> Result<xai::PredictNextActionsResponse, ClientError> {
        self.with_retry(
            &self.xai,
            |mut stub, request| async move { stub.predict_next_actions(request).await },
            request,
        )
        .await
    }

    /// [`rank`](Self::rank) through xAI's contract: the same user, history and candidates as
    /// one `PredictNextActions` call ([`xai_request`]), its answer read as the home-mixer reads
    /// it (by tweet id, `exp(topLogProbs[ActionName])`). The candidates share one product
    /// surface in xAI's contract: the first candidate's.
    pub async fn rank_xai(
        &self,
        user_id: u64,
        history: &[pb::HistoryEvent],
        candidates: &[pb::Candidate],
    ) -> Result<Vec<ScoredCandidate>, ClientError> {
        let response = self
            .predict_next_actions(xai_request(user_id, history, candidates, String::new()))
            .await?;
        let set = match response.distribution_sets.as_slice() {
            [set] => set,
            sets => {
                return Err(ClientError::Protocol(format!(
                    "{} distribution sets for one candidate set",
                    sets.len()
                )))
            }
        };
        if set.candidate_distributions.len() != candidates.len() {
            return Err(ClientError::Protocol(format!(
                "{} distributions for {} candidates",
                set.candidate_distributions.len(),
                candidates.len()
            )));
        }
        candidates
            .iter()
            .zip(&set.candidate_distributions)
            .map(|(candidate, d)| {
                let echoed = d.candidate.as_ref().map(|c| c.tweet_id);
                if echoed != Some(candidate.post_id) {
                    return Err(ClientError::Protocol(format!(
                        "distribution for {echoed:?} does not match candidate {}",
                        candidate.post_id
                    )));
                }
                let scores = PhoenixScores::from_xai(d);
                let weighted_score = self.config.weights.score(&scores);
                Ok(ScoredCandidate {
                    post_id: candidate.post_id,
                    author_id: candidate.author_id,
                    logits: Vec::new(), // xAI's answer carries log-probabilities, not logits
                    scores,
                    weighted_score,
                })
            })
            .collect()
    }

    /// Scores `candidates` for a user and their history (oldest first), in request order.
    /// Sent in the columnar form, the one the server decodes cheapest.
    pub async fn rank(
        &self,
        user_id: u64,
        history: &[pb::HistoryEvent],
        candidates: &[pb::Candidate],
    ) -> Result<Vec<ScoredCandidate>, ClientError> {
        let request = columnar(user_id, history, candidates, String::new());
        let response = self.rank_request(request).await?;
        self.scored(candidates, response)
    }

    /// Turns a response into named scores, checking it against the request's candidates.
    pub fn scored(
        &self,
        candidates: &[pb::Candidate],
        response: pb::RankResponse,
    ) -> Result<Vec<ScoredCandidate>, ClientError> {
        if response.scores.len() != candidates.len() {
            return Err(ClientError::Protocol(format!(
                "{} scores for {} candidates",
                response.scores.len(),
                candidates.len()
            )));
        }
        let actions = &self.info.actions;
        candidates
            .iter()
            .zip(response.scores)
            .map(|(candidate, s)| {
                if s.post_id != candidate.post_id || s.probabilities.len() != actions.len() {
                    return Err(ClientError::Protocol(format!(
                        "score for post {} does not match candidate {} with {} actions",
                        s.post_id,
                        candidate.post_id,
                        actions.len()
                    )));
                }
                let scores = PhoenixScores::from_named(actions, &s.probabilities);
                let weighted_score = self.config.weights.score(&scores);
                Ok(ScoredCandidate {
                    post_id: candidate.post_id,
                    author_id: candidate.author_id,
                    logits: s.logits,
                    scores,
                    weighted_score,
                })
            })
            .collect()
    }

    async fn with_retry<S, M, T, F, Fut>(
        &self,
        stub: &S,
        mut call: F,
        message: M,
    ) -> Result<T, ClientError>
    where
        S: Clone,
        M: Clone,
        F: FnMut(S, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let policy = &self.config.retry;
        let mut rng = SplitMix64(jitter_seed());
        let mut ceiling = policy.initial_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut request = Request::new(message.clone());
            request.set_timeout(self.config.request_timeout);
            let status = match call(stub.clone(), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            if !RetryPolicy::retries(&status) || attempts >= policy.max_attempts {
                return Err(ClientError::Status { status, attempts });
            }
            let jittered = ceiling.mul_f64(rng.unit());
            tokio::time::sleep(jittered.max(pushback(&status).unwrap_or_default())).await;
            ceiling = ceiling.mul_f64(policy.multiplier).min(policy.max_backoff);
        }
    }
}

/// A request in the columnar form (`history_columns`, `candidate_columns`): one packed field
/// per column, which the server decodes with one copy per column instead of one message per
/// event. Action `a` of an event sets bit `a - 1` of its mask.
pub fn columnar(
    user_id: u64,
    history: &[pb::HistoryEvent],
    candidates: &[pb::Candidate],
    request_id: String,
) -> pb::RankRequest {
    let history_columns = pb::HistoryColumns {
        post_ids: history.iter().map(|e| e.post_id).collect(),
        author_ids: history.iter().map(|e| e.author_id).collect(),
        action_masks: history
            .iter()
            .map(|e| {
                // A value that is no Action sets bit 31, so the server refuses it by name
                // (as it would the row form) rather than the value vanishing here.
                e.actions.iter().fold(0u32, |mask, &a| match a {
                    1..=31 => mask | 1 << (a - 1),
                    _ => mask | 1 << 31,
                })
            })
            .collect(),
        product_surfaces: history.iter().map(|e| e.product_surface).collect(),
    };
    let candidate_columns = pb::CandidateColumns {
        post_ids: candidates.iter().map(|c| c.post_id).collect(),
        author_ids: candidates.iter().map(|c| c.author_id).collect(),
        product_surfaces: candidates.iter().map(|c| c.product_surface).collect(),
    };
    pb::RankRequest {
        user_id,
        request_id,
        history_columns: Some(history_columns),
        candidate_columns: Some(candidate_columns),
        ..Default::default()
    }
}

/// A `PredictNextActionsRequest` as xAI's home-mixer builds one: one candidate set (the
/// candidates' ids, the first candidate's product surface for all) and one user-action sequence
/// in the aggregated form (one entry per event with every action it took, its surface on the
/// first), asking for log-probabilities. Actions without an xAI `ActionName` (`dwell_time`)
/// are left out of the history.
pub fn xai_request(
    user_id: u64,
    history: &[pb::HistoryEvent],
    candidates: &[pb::Candidate],
    request_id: String,
) -> xai::PredictNextActionsRequest {
    let action_name = |action: i32| -> Option<i32> {
        let name = ACTIONS.get(usize::try_from(action).ok()?.checked_sub(1)?)?;
        XAI_ACTIONS
            .iter()
            .find(|(ours, _)| ours == name)
            .map(|(_, theirs)| *theirs as i32)
    };
    let entries = history
        .iter()
        .map(|event| {
            let mut actions: Vec<xai::ActionInfo> = event
                .actions
                .iter()
                .filter_map(|&a| action_name(a))
                .map(|action_name| xai::ActionInfo {
                    action_name,
                    user_action_meta: None,
                })
                .collect();
            if actions.is_empty() {
                actions.push(xai::ActionInfo::default()); // carries the surface
            }
            actions[0].user_action_meta = Some(xai::UserActionMeta {
                product_surface: event.product_surface as i32,
            });
            xai::AggregatedUserAction {
                user_id: 0,
                tweet_info: Some(xai::TweetInfo {
                    tweet_id: event.post_id,
                    author_id: event.author_id,
                }),
                actions,
            }
        })
        .collect();
    let sequence = xai::UserActionSequence {
        user_id,
        user_actions: Vec::new(),
        user_actions_data: Some(xai::UserActionSequenceDataContainer {
            data: Some(
                xai::user_action_sequence_data_container::Data::OrderedAggregatedUserActionsList(
                    xai::AggregatedUserActionList {
                        aggregated_user_actions: entries,
                    },
                ),
            ),
        }),
    };
    xai::PredictNextActionsRequest {
        sequences: vec![sequence],
        candidate_sets: vec![xai::CandidateSet {
            user_id,
            candidates: candidates
                .iter()
                .map(|c| xai::TweetInfo {
                    tweet_id: c.post_id,
                    author_id: c.author_id,
                })
                .collect(),
            product_surface: candidates.first().map_or(0, |c| c.product_surface as i32),
        }],
        return_logprob: true,
        metadata: request_id,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_in_every_form_normalise_to_one_uri() {
        let cases = [
            ("127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("localhost:50051", "http://localhost:50051"),
            ("  localhost:50051\n", "http://localhost:50051"),
            ("[::1]:50051", "http://[::1]:50051"),
            ("[2001:db8::7]:8080", "http://[2001:db8::7]:8080"),
            ("http://127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("http://127.0.0.1:50051/", "http://127.0.0.1:50051"),
            (
                "HTTP://ranker.internal:50051",
                "http://ranker.internal:50051",
            ),
            ("http://[::1]:50051", "http://[::1]:50051"),
            ("http://ranker.internal", "http://ranker.internal"),
            ("https://ranker.example.com", "https://ranker.example.com"),
            (
                "https://ranker.example.com:443",
                "https://ranker.example.com:443",
            ),
        ];
        for (given, expected) in cases {
            let uri = normalize_target(given).unwrap_or_else(|e| panic!("{given:?}: {e}"));
            assert_eq!(uri, expected, "{given:?}");
            assert_eq!(
                normalize_target(&uri).unwrap(),
                uri,
                "not idempotent: {given:?}"
            );
        }
    }

    #[test]
    fn bad_targets_are_refused_with_a_reason_naming_them() {
        let cases = [
            ("", "empty"),
            ("   ", "empty"),
            ("localhost", "no port"),
            ("::1:50051", "brackets"),
            ("grpc://localhost:50051", "unsupported scheme"),
            ("dns:///localhost:50051", "unsupported scheme"),
            ("http://", "bad target"),
            ("localhost:50051/ranker", "path"),
            ("user@localhost:50051", "user information"),
            ("local host:50051", "bad target"),
        ];
        for (given, why) in cases {
            let error = normalize_target(given).expect_err(given).to_string();
            assert!(error.contains(why), "{given:?}: {error}");
            assert!(error.contains(&format!("{given:?}")), "{given:?}: {error}");
            assert!(error.contains("host:port"), "{given:?}: {error}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_target() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = format!("127.0.0.1:{port}");
        let error = channel(&target, Duration::from_secs(5))
            .await
            .expect_err("nothing listens there");
        let text = error.to_string();
        assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
        assert!(text.contains(&format!("http://{target}")), "{text}");
        assert!(
            text.len() > format!("could not connect to http://{target}: transport error").len(),
            "no cause: {text}"
        );
    }

    #[test]
    fn only_unavailable_and_resource_exhausted_short_of_a_size_limit_are_retried() {
        let retried = [
            Status::unavailable("connection refused"),
            Status::resource_exhausted("the batch queue is full"),
            Status::resource_exhausted(""),
            Status::resource_exhausted("too many candidates: larger than the queue"),
        ];
        for status in retried {
            assert!(RetryPolicy::retries(&status), "{status:?}");
        }
        let not_retried = [
            // What grpc-core and tonic answer for a request over the transport's size limit.
            Status::resource_exhausted("Received message larger than max (4194400 vs. 4194304)"),
            Status::resource_exhausted("Sent message larger than max (5000000 vs. 4194304)"),
            Status::resource_exhausted("received message LARGER THAN MAX"),
            Status::invalid_argument("candidates[1].product_surface"),
            Status::deadline_exceeded("Deadline Exceeded"),
            Status::internal("boom"),
            Status::unknown("unavailable"),
            Status::cancelled("cancelled"),
        ];
        for status in not_retried {
            assert!(!RetryPolicy::retries(&status), "{status:?}");
        }
    }

    #[test]
    fn tls_flags_make_a_config_only_when_given() {
        assert_eq!(TlsConfig::from_flags(None, None, None, None), None);
        let tls = TlsConfig::from_flags(None, None, None, Some("ranker.internal".into())).unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("ranker.internal"));
        assert_eq!(
            TlsConfig::from_flags(Some("ca.pem".into()), None, None, None)
                .unwrap()
                .ca,
            Some(PathBuf::from("ca.pem"))
        );
    }

    #[tokio::test]
    async fn tls_files_and_pairs_are_checked_before_connecting() {
        let missing = std::env::temp_dir().join("phoenix-no-such-ca.pem");
        let tls = TlsConfig {
            ca: Some(missing.clone()),
            ..TlsConfig::default()
        };
        // A plain target with TLS options is spoken to over TLS (https://).
        let error = channel_with_tls("127.0.0.1:1", Duration::from_secs(1), Some(&tls))
            .await
            .expect_err("no CA file");
        let text = error.to_string();
        assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
        assert!(text.contains("https://127.0.0.1:1"), "{text}");
        assert!(
            text.contains(&format!("--tls-ca {}", missing.display())),
            "{text}"
        );

        let half = TlsConfig {
            cert: Some("client.pem".into()),
            ..TlsConfig::default()
        };
        let error = channel_with_tls("https://127.0.0.1:1", Duration::from_secs(1), Some(&half))
            .await
            .expect_err("a certificate without its key");
        assert!(
            error.to_string().contains("both --tls-cert and --tls-key"),
            "{error}"
        );
    }
}

#[cfg(test)]
mod columnar_tests {
    use super::*;

    #[test]
    fn columns_carry_every_row_and_actions_as_bits() {
        let history = vec![
            pb::HistoryEvent {
                post_id: 7,
                author_id: 3,
                actions: vec![1, 19],
                product_surface: 2,
            },
            pb::HistoryEvent {
                post_id: 8,
                author_id: 4,
                actions: vec![],
                product_surface: 0,
            },
        ];
        let candidates = vec![pb::Candidate {
            post_id: 9,
            author_id: 5,
            product_surface: 1,
        }];
        let r = columnar(42, &history, &candidates, "id".into());
        let h = r.history_columns.unwrap();
        assert_eq!(h.post_ids, [7, 8]);
        assert_eq!(h.author_ids, [3, 4]);
        assert_eq!(h.action_masks, [1 | 1 << 18, 0]);
        assert_eq!(h.product_surfaces, [2, 0]);
        let c = r.candidate_columns.unwrap();
        assert_eq!(
            (c.post_ids, c.author_ids, c.product_surfaces),
            (vec![9], vec![5], vec![1])
        );
        assert!(r.history.is_empty() && r.candidates.is_empty());
        assert_eq!((r.user_id, r.request_id.as_str()), (42, "id"));
    }
}
