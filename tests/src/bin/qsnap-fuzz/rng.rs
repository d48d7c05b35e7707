//! A small, seedable PRNG (xorshift64*) and the per-iteration seed derivation.
//!
//! Not for cryptography: it only has to be fast and reproducible, so that a seed
//! printed on failure replays the same inputs.

/// xorshift64* (Vigna): 64 bits of state, good enough to drive mutations.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed` (any value, zero included).
    pub(crate) fn new(seed: u64) -> Self {
        Self(splitmix(seed) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`0` when `n == 0`). The modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// A uniformly chosen element of a non-empty slice.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }

    /// A length skewed towards small values: usually below 16, sometimes up to `max`.
    pub(crate) fn small_len(&mut self, max: usize) -> usize {
        match self.below(10) {
            0..=6 => self.range(1, 16.min(max.max(2))),
            7 | 8 => self.range(1, 256.min(max.max(2))),
            _ => self.range(1, max.max(2)),
        }
    }

    /// An independent generator (for a sub-task) drawn from this one.
    pub(crate) fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }
}

/// splitmix64's finalizer: spreads nearby seeds far apart.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of iteration `iteration` of `target` in a run seeded with `seed`.
///
/// Depends on nothing else (not on time or on other targets), so `--seed S
/// --iteration K` replays exactly one failing input.
pub(crate) fn iteration_seed(seed: u64, target: &str, iteration: u64) -> u64 {
    let salt = target.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    splitmix(seed ^ splitmix(salt ^ splitmix(iteration)))
}

/// A fresh run seed from the OS (falls back to the clock).
pub(crate) fn fresh_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}
