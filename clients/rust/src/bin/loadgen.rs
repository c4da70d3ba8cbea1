//! Closed-loop load generator: N requests in flight for D seconds, results as one JSON line.
//!
//!     loadgen [--target 127.0.0.1:50051] [--concurrency 8] [--duration-secs 10]
//!             [--history 64] [--candidates 32] [--warmup-secs 1] [--timeout-ms 10000]
//!             [--connections 1] [--seed 1] [--surfaces N] [--rows | --xai]
//!             [--tls-ca PATH] [--tls-cert PATH --tls-key PATH] [--tls-server-name NAME]
//!
//! Requests go in the columnar form (what `PhoenixClient::rank` sends); `--rows` sends the
//! row form instead, and `--xai` sends them as xAI's `PredictNextActions` (what xAI's
//! home-mixer sends: `phoenix_client::xai_request`).
//!
//! Every worker sends the next request as soon as the previous one answers (no retries: the
//! server's own behaviour is measured). Requests are generated before the clock starts.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use phoenix_client::pb::ranking_service_client::RankingServiceClient;
use phoenix_client::xai::recsys_predictor_client::RecsysPredictorClient;
use phoenix_client::{columnar, pb, synthetic, xai, xai_request, ClientConfig, TlsFlags};
use tonic::transport::Channel;

/// Closed-loop load generator for a Phoenix ranking server.
///
/// CONCURRENCY workers each send the next request as soon as the previous one answers, for
/// DURATION_SECS after WARMUP_SECS of warm-up, with no retries (the server's own behaviour is
/// measured). The requests, 256 synthetic ones, are generated before the clock starts. Prints one
/// JSON line: requests, requests_per_s, candidates_per_s, latency_ms {p50, p90, p99, max, mean}
/// and errors by gRPC status code.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server: host:port, [::1]:port, http://host:port or https://host:port (TLS)
    #[arg(long, env = "PHOENIX_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,

    #[command(flatten)]
    tls: TlsFlags,

    /// Requests in flight
    #[arg(long, default_value_t = 8)]
    concurrency: usize,

    /// Seconds measured, after the warm-up
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,

    /// History events per request
    #[arg(long, default_value_t = 64)]
    history: usize,

    /// Candidates per request
    #[arg(long, default_value_t = 32)]
    candidates: usize,

    /// Seconds of warm-up, not measured
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,

    /// Deadline of each request, in milliseconds
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,

    /// HTTP/2 connections the workers share (round robin)
    #[arg(long, default_value_t = 1)]
    connections: usize,

    /// Seed of the synthetic requests (request i has seed SEED * 1000003 + i)
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Product surfaces are drawn from [0, SURFACES) [default: the model's
    /// product_surface_vocab_size from the server's ModelInfo]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    surfaces: Option<u32>,

    /// Send the row form (`history`, `candidates`) instead of the columnar form
    #[arg(long, conflicts_with = "xai")]
    rows: bool,

    /// Send xAI's PredictNextActions (one candidate set, the history aggregated) instead of Rank
    #[arg(long)]
    xai: bool,
}

/// One request of the pool, in the form the run sends.
#[derive(Clone)]
enum Call {
    Rank(pb::RankRequest),
    Xai(xai::PredictNextActionsRequest),
}

/// The stubs a worker calls through (one channel).
struct Stubs {
    rank: RankingServiceClient<Channel>,
    xai: RecsysPredictorClient<Channel>,
}

impl Stubs {
    fn new(channel: Channel) -> Self {
        Stubs {
            rank: RankingServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            xai: RecsysPredictorClient::new(channel).max_decoding_message_size(64 << 20),
        }
    }

    async fn send(&mut self, call: &Call, timeout: Duration) -> Result<(), tonic::Status> {
        match call {
            Call::Rank(r) => {
                let mut request = tonic::Request::new(r.clone());
                request.set_timeout(timeout);
                self.rank.rank(request).await.map(drop)
            }
            Call::Xai(r) => {
                let mut request = tonic::Request::new(r.clone());
                request.set_timeout(timeout);
                self.xai.predict_next_actions(request).await.map(drop)
            }
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let tls = args.tls.config();
    let Args {
        target,
        concurrency,
        history,
        candidates,
        connections,
        seed,
        rows,
        xai,
        ..
    } = args;
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let duration = Duration::from_secs_f64(args.duration_secs);
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let timeout = Duration::from_millis(args.timeout_ms);

    let connect_timeout = ClientConfig::default().connect_timeout;
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels
            .push(phoenix_client::channel_with_tls(&target, connect_timeout, tls.as_ref()).await?);
    }
    let surfaces = match args.surfaces {
        Some(n) => n,
        None => {
            let mut request = tonic::Request::new(pb::GetModelInfoRequest {});
            request.set_timeout(timeout);
            let info = RankingServiceClient::new(channels[0].clone())
                .get_model_info(request)
                .await
                .map_err(|s| {
                    format!(
                        "GetModelInfo from {target}: {:?}: {}",
                        s.code(),
                        s.message()
                    )
                })?
                .into_inner();
            match info.product_surface_vocab_size {
                0 => {
                    return Err(
                        "the server reports product_surface_vocab_size 0; pass --surfaces".into(),
                    )
                }
                n => n,
            }
        }
    };
    let pool: Vec<_> = (0..256)
        .map(|i| {
            let r = synthetic::request(
                seed.wrapping_mul(1_000_003).wrapping_add(i),
                history,
                candidates,
                surfaces,
            );
            if xai {
                Call::Xai(xai_request(
                    r.user_id,
                    &r.history,
                    &r.candidates,
                    r.request_id,
                ))
            } else if rows {
                Call::Rank(r)
            } else {
                Call::Rank(columnar(r.user_id, &r.history, &r.candidates, r.request_id))
            }
        })
        .collect();

    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut stubs = Stubs::new(channels[w % channels.len()].clone());
        let pool = pool.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut i = w;
            loop {
                let sent = Instant::now();
                if sent >= stop_at {
                    break;
                }
                let call = &pool[i % pool.len()];
                i += concurrency;
                let result = stubs.send(call, timeout).await;
                let done = Instant::now();
                if sent < measure_from || done > stop_at {
                    continue; // warm-up, or finished after the window closed
                }
                match result {
                    Ok(_) => latencies.push(done.duration_since(sent).as_secs_f64() * 1e3),
                    Err(status) => *errors.entry(format!("{:?}", status.code())).or_default() += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        for (code, n) in e {
            *errors.entry(code).or_default() += n;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let seconds = duration.as_secs_f64();
    let ok = latencies.len() as f64;
    let report = serde_json::json!({
        "target": target,
        "concurrency": concurrency,
        "duration_s": seconds,
        "history": history,
        "candidates": candidates,
        "surfaces": surfaces,
        "form": if xai { "xai" } else if rows { "rows" } else { "columns" },
        "requests": latencies.len(),
        "requests_per_s": ok / seconds,
        "candidates_per_s": ok * candidates as f64 / seconds,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "max": latencies.last().copied().unwrap_or(f64::NAN),
            "mean": if latencies.is_empty() { f64::NAN } else { latencies.iter().sum::<f64>() / ok },
        },
        "errors": errors,
    });
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_keep_their_defaults() {
        let args = Args::try_parse_from(["loadgen"]).unwrap();
        assert_eq!(args.concurrency, 8);
        assert_eq!(args.duration_secs, 10.0);
        assert_eq!(args.history, 64);
        assert_eq!(args.candidates, 32);
        assert_eq!(args.warmup_secs, 1.0);
        assert_eq!(args.timeout_ms, 10_000);
        assert_eq!(args.connections, 1);
        assert_eq!(args.seed, 1);
        assert_eq!(args.surfaces, None);
        assert!(!args.rows);
        assert_eq!(args.tls.config(), None);
    }
}
