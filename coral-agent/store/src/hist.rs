//! Latency histograms with log-spaced buckets: bucket `i` holds values in
//! `(2^((i-1)/16), 2^(i/16)]` µs, so a percentile read back as the bucket's
//! geometric middle is within ±2.2% of the true value. Stored sparse, as
//! `bucket:count` pairs joined by commas.

use std::collections::BTreeMap;

/// Buckets per doubling.
const PER_OCTAVE: f64 = 16.0;
/// Highest bucket (2^(600/16) µs is far beyond any request).
const MAX_BUCKET: u16 = 600;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    buckets: BTreeMap<u16, u64>,
    count: u64,
}

/// The bucket a value in µs falls into (values below 1 µs go to bucket 0).
pub fn bucket(us: u64) -> u16 {
    if us <= 1 {
        return 0;
    }
    let b = ((us as f64).log2() * PER_OCTAVE).ceil();
    (b as u64).min(u64::from(MAX_BUCKET)) as u16
}

/// The value a bucket stands for: its geometric middle.
pub fn value(bucket: u16) -> u64 {
    if bucket == 0 {
        return 1;
    }
    (2f64.powf((f64::from(bucket) - 0.5) / PER_OCTAVE)).round() as u64
}

impl Hist {
    pub fn record(&mut self, us: u64) {
        self.record_n(bucket(us), 1);
    }

    fn record_n(&mut self, b: u16, n: u64) {
        *self.buckets.entry(b).or_default() += n;
        self.count += n;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn merge(&mut self, other: &Hist) {
        for (&b, &n) in &other.buckets {
            self.record_n(b, n);
        }
    }

    /// The value at quantile `q` (0..=1), 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return value(b);
            }
        }
        self.buckets.keys().next_back().map_or(0, |&b| value(b))
    }

    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(self.buckets.len() * 8);
        for (i, (b, n)) in self.buckets.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("{b}:{n}"));
        }
        s
    }

    /// Parses [`Hist::encode`]'s text; malformed pairs are skipped.
    pub fn decode(s: &str) -> Hist {
        let mut h = Hist::default();
        for pair in s.split(',') {
            if let Some((b, n)) = pair.split_once(':')
                && let (Ok(b), Ok(n)) = (b.parse::<u16>(), n.parse::<u64>())
                && b <= MAX_BUCKET
            {
                h.record_n(b, n);
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_a_few_percent() {
        for us in [
            2u64, 3, 10, 99, 1_000, 12_345, 50_000, 1_000_000, 30_000_000,
        ] {
            let v = value(bucket(us)) as f64;
            let err = (v - us as f64).abs() / us as f64;
            assert!(err < 0.025, "{us} -> {v} ({err})");
        }
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(u64::MAX), MAX_BUCKET);
    }

    #[test]
    fn quantiles_of_a_known_mix() {
        let mut h = Hist::default();
        // 90 at 10 ms, 9 at 50 ms, 1 at 200 ms.
        (0..90).for_each(|_| h.record(10_000));
        (0..9).for_each(|_| h.record(50_000));
        h.record(200_000);
        let near = |a: u64, b: u64| (a as f64 - b as f64).abs() / (b as f64) < 0.025;
        assert!(near(h.quantile(0.5), 10_000));
        assert!(near(h.quantile(0.9), 10_000));
        assert!(near(h.quantile(0.95), 50_000));
        assert!(near(h.quantile(0.99), 50_000));
        assert!(near(h.quantile(1.0), 200_000));
        assert_eq!(Hist::default().quantile(0.5), 0);
    }

    #[test]
    fn encode_decode_merge() {
        let mut a = Hist::default();
        a.record(100);
        a.record(100);
        a.record(5_000);
        let d = Hist::decode(&a.encode());
        assert_eq!(d, a);
        let mut m = d.clone();
        m.merge(&a);
        assert_eq!(m.count(), 6);
        assert_eq!(Hist::decode("x,1:2,9999:1,3:").count(), 2);
    }
}
