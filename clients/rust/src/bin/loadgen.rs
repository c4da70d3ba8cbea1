//! Closed-loop load generator: N requests in flight for D seconds, results as one JSON line.
//!
//!     loadgen [--target http://127.0.0.1:50051] [--concurrency 8] [--duration-secs 10]
//!             [--history 64] [--candidates 32] [--warmup-secs 1] [--timeout-ms 10000]
//!             [--connections 1] [--seed 1]
//!
//! Every worker sends the next request as soon as the previous one answers (no retries: the
//! server's own behaviour is measured). Requests are generated before the clock starts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use phoenix_client::pb::ranking_service_client::RankingServiceClient;
use phoenix_client::synthetic;
use tonic::transport::Endpoint;

fn flag<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad value for {name}: {v}"))
        })
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target: String = flag("--target", "http://127.0.0.1:50051".to_string());
    let concurrency: usize = flag("--concurrency", 8);
    let duration = Duration::from_secs_f64(flag("--duration-secs", 10.0));
    let warmup = Duration::from_secs_f64(flag("--warmup-secs", 1.0));
    let history: usize = flag("--history", 64);
    let candidates: usize = flag("--candidates", 32);
    let timeout = Duration::from_millis(flag("--timeout-ms", 10_000));
    let connections: usize = flag("--connections", 1);
    let seed: u64 = flag("--seed", 1);

    let pool: Vec<_> = (0..256)
        .map(|i| synthetic::request(seed * 1_000_003 + i, history, candidates))
        .collect();
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            Endpoint::from_shared(target.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }

    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut stub = RankingServiceClient::new(channels[w % channels.len()].clone())
            .max_decoding_message_size(64 << 20);
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
                let mut request = tonic::Request::new(pool[i % pool.len()].clone());
                request.set_timeout(timeout);
                i += concurrency;
                let result = stub.rank(request).await;
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
