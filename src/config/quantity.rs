//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1e3`, `2G`), exactly, as a
//! fraction: what the kubelet turns into cgroup limits and the downward API's values.

/// A non-negative quantity as `num / den`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    num: u128,
    den: u128,
}

impl Quantity {
    /// Parses a quantity: a decimal number (optionally with a fraction and a `e`/`E`
    /// exponent) and a suffix (`Ki` … `Ei`, `n` `u` `m` `k` `M` `G` `T` `P` `E`).
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(split);
        let (mut num, mut den) = decimal(number)?;
        let (mul, div): (u128, u128) = match suffix {
            "" => (1, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            "n" => (1, 1_000_000_000),
            "u" => (1, 1_000_000),
            "m" => (1, 1000),
            "k" => (1000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..].parse().ok()?;
                if exp.unsigned_abs() > 18 {
                    return None;
                }
                let p = 10u128.pow(exp.unsigned_abs());
                if exp >= 0 { (p, 1) } else { (1, p) }
            }
            _ => return None,
        };
        num = num.checked_mul(mul)?;
        den = den.checked_mul(div)?;
        Some(Quantity { num, den })
    }

    /// `self / by`, rounded up (the kubelet's downward API rounding).
    pub fn div_ceil(&self, by: &Quantity) -> Option<u128> {
        let n = self.num.checked_mul(by.den)?;
        let d = self.den.checked_mul(by.num)?;
        (d != 0).then(|| n.div_ceil(d))
    }

    /// Thousandths, rounded up (CPU in millicores).
    pub fn millis(&self) -> u128 {
        self.num.saturating_mul(1000).div_ceil(self.den)
    }

    /// Whole units, rounded up (memory in bytes).
    pub fn units(&self) -> u128 {
        self.num.div_ceil(self.den)
    }
}

/// A decimal `123`, `1.25`, `.5` as a fraction.
fn decimal(s: &str) -> Option<(u128, u128)> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 18 {
        return None;
    }
    let digits = |d: &str| -> Option<u128> {
        if d.is_empty() {
            return Some(0);
        }
        if !d.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        d.parse().ok()
    };
    let den = 10u128.pow(frac.len() as u32);
    let num = digits(int)?.checked_mul(den)?.checked_add(digits(frac)?)?;
    Some((num, den))
}

/// The instance's memory (`MemTotal`) in bytes: a pod's node capacity, here.
pub fn instance_memory() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u128 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_writes_them() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        assert_eq!(q("500m").millis(), 500);
        assert_eq!(q("1.5").millis(), 1500);
        assert_eq!(q("2").millis(), 2000);
        assert_eq!(q("0.1").millis(), 100);
        assert_eq!(q("1u").millis(), 1, "rounded up");
        assert_eq!(q("128Mi").units(), 128 << 20);
        assert_eq!(q("1G").units(), 1_000_000_000);
        assert_eq!(q("129e6").units(), 129_000_000);
        assert_eq!(q("1.5Gi").units(), 3 << 29);
        assert_eq!(q("500m").div_ceil(&q("1")), Some(1));
        assert_eq!(q("128Mi").div_ceil(&q("1Mi")), Some(128));
        assert_eq!(q("100M").div_ceil(&q("1Mi")), Some(96));
        for bad in ["", "abc", "1X", "-1", "1.2.3", "m", "1e99"] {
            assert_eq!(Quantity::parse(bad), None, "{bad}");
        }
    }
}
