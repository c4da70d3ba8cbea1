//! Deterministic synthetic users, histories and candidates (examples and load generation).

use crate::pb;

/// SplitMix64: a tiny, fast, well-mixed PRNG (the same generator the id hashing uses).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A request for a random user with `history` events and `candidates` candidates.
pub fn request(seed: u64, history: usize, candidates: usize) -> pb::RankRequest {
    let mut rng = SplitMix64(seed);
    let history = (0..history)
        .map(|_| pb::HistoryEvent {
            post_id: rng.next_u64(),
            author_id: rng.below(5000),
            actions: (1..=19).filter(|_| rng.unit() < 0.1).collect(),
            product_surface: rng.below(16) as u32,
        })
        .collect();
    let candidates = (0..candidates)
        .map(|_| pb::Candidate {
            post_id: rng.next_u64(),
            author_id: rng.below(5000),
            product_surface: rng.below(16) as u32,
        })
        .collect();
    pb::RankRequest {
        user_id: rng.next_u64(),
        history,
        candidates,
        request_id: format!("synthetic-{seed}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_hashing_contract() {
        // Output k of SplitMix64 seeded with x is the contract's h_k(x) (golden values).
        let mut rng = SplitMix64(42);
        assert_eq!(rng.next_u64(), 13679457532755275413);
        assert_eq!(rng.next_u64(), 2949826092126892291);
    }

    #[test]
    fn requests_are_deterministic() {
        assert_eq!(request(7, 5, 9), request(7, 5, 9));
        assert_ne!(request(7, 5, 9), request(8, 5, 9));
        assert_eq!(request(1, 3, 4).candidates.len(), 4);
    }
}
