//! The typed client: one reused channel, deadlines, retries with jittered backoff.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::pb::{self, ranking_service_client::RankingServiceClient};
use crate::scores::{PhoenixScores, Weights};
use crate::synthetic::SplitMix64;

/// Retries for `UNAVAILABLE` and `RESOURCE_EXHAUSTED` only (nothing else is safe or useful to
/// retry); the delay before attempt n+1 is uniform in [0, min(max, initial * multiplier^n)]
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

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long `connect` may take to establish the HTTP/2 connection.
    pub connect_timeout: Duration,
    /// Deadline of each attempt, sent to the server as `grpc-timeout`.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Weights of [`ScoredCandidate::weighted_score`].
    pub weights: Weights,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            weights: Weights::default(),
        }
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// The server could not be reached within the connect timeout.
    Connect(String),
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
            ClientError::Connect(why) => write!(f, "could not connect: {why}"),
            ClientError::Status { status, attempts } => write!(
                f,
                "{:?}: {} (after {attempts} attempt{})",
                status.code(),
                status.message(),
                if *attempts == 1 { "" } else { "s" }
            ),
            ClientError::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

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
    /// Connects (within `connect_timeout`) and reads the server's `ModelInfo`.
    pub async fn connect(target: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let endpoint = Endpoint::from_shared(target.to_string())
            .map_err(|e| ClientError::Connect(format!("bad target {target:?}: {e}")))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        let channel = tokio::time::timeout(config.connect_timeout, endpoint.connect())
            .await
            .map_err(|_| ClientError::Connect(format!("{target}: timed out")))?
            .map_err(|e| ClientError::Connect(format!("{target}: {e}")))?;
        let stub = RankingServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let mut client = PhoenixClient {
            stub,
            config,
            info: pb::ModelInfo::default(),
        };
        client.info = client
            .with_retry(
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
            |mut stub, request| async move { stub.rank(request).await },
            request,
        )
        .await
    }

    /// Scores `candidates` for a user and their history (oldest first), in request order.
    pub async fn rank(
        &self,
        user_id: u64,
        history: &[pb::HistoryEvent],
        candidates: &[pb::Candidate],
    ) -> Result<Vec<ScoredCandidate>, ClientError> {
        let request = pb::RankRequest {
            user_id,
            history: history.to_vec(),
            candidates: candidates.to_vec(),
            request_id: String::new(),
        };
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

    async fn with_retry<M, T, F, Fut>(&self, mut call: F, message: M) -> Result<T, ClientError>
    where
        M: Clone,
        F: FnMut(RankingServiceClient<Channel>, Request<M>) -> Fut,
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
            let status = match call(self.stub.clone(), request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            let retryable = matches!(status.code(), Code::Unavailable | Code::ResourceExhausted);
            if !retryable || attempts >= policy.max_attempts {
                return Err(ClientError::Status { status, attempts });
            }
            let jittered = ceiling.mul_f64(rng.unit());
            tokio::time::sleep(jittered.max(pushback(&status).unwrap_or_default())).await;
            ceiling = ceiling.mul_f64(policy.multiplier).min(policy.max_backoff);
        }
    }
}
