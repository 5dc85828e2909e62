//! Token choice from logits, and the tiny PRNG behind weights and sampling.

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state, one add and a mix per output. Used to
/// generate weights from `--seed` and, per request, the uniforms of seeded sampling.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform `f32` in `[0, 1)` (24 random mantissa bits).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

/// Picks the next token from one row of logits.
///
/// - `temperature == 0`: argmax, ties broken towards the lowest id.
/// - `temperature > 0`: inverse-CDF sampling of `softmax(logits / temperature)` at `u` in `[0, 1)`
///   (the first id whose cumulative weight exceeds `u * total`).
///
/// A GPU executor reproduces this exactly for temperature 0 (the argmax); for temperature > 0 it
/// takes the same host-drawn `u`, so it differs only where float summation order moves a
/// cumulative boundary past `u`.
pub fn sample_row(logits: &[f32], temperature: f32, u: f32) -> u8 {
    debug_assert!(!logits.is_empty() && logits.len() <= 256);
    let mut best = 0usize;
    let mut max = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            max = l;
            best = i;
        }
    }
    if temperature <= 0.0 || !max.is_finite() {
        return best as u8;
    }
    let inv_t = 1.0 / temperature;
    let mut total = 0.0f32;
    for &l in logits {
        total += ((l - max) * inv_t).exp();
    }
    let target = u * total;
    let mut acc = 0.0f32;
    for (i, &l) in logits.iter().enumerate() {
        acc += ((l - max) * inv_t).exp();
        if acc > target {
            return i as u8;
        }
    }
    best as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_uniform_in_unit_interval() {
        let mut a = SplitMix64::new(1);
        let mut b = SplitMix64::new(1);
        let mut sum = 0.0f64;
        for _ in 0..10_000 {
            let x = a.next_f32();
            assert_eq!(x, b.next_f32());
            assert!((0.0..1.0).contains(&x));
            sum += x as f64;
        }
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
    }

    #[test]
    fn temperature_zero_is_argmax_with_lowest_id_on_ties() {
        let mut l = vec![0.0f32; 256];
        l[7] = 3.0;
        l[9] = 3.0;
        assert_eq!(sample_row(&l, 0.0, 0.99), 7);
    }

    #[test]
    fn sampling_follows_the_softmax_weights() {
        let mut l = vec![f32::NEG_INFINITY; 256];
        l[1] = 0.0;
        l[2] = 0.0; // two equally likely ids
        assert_eq!(sample_row(&l, 1.0, 0.1), 1);
        assert_eq!(sample_row(&l, 1.0, 0.9), 2);
        let mut rng = SplitMix64::new(9);
        let ones = (0..4000)
            .filter(|_| sample_row(&l, 1.0, rng.next_f32()) == 1)
            .count();
        assert!((1800..2200).contains(&ones), "{ones}");
    }
}
