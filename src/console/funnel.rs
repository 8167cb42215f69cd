//! Funnel plots: each unit's proportion against its denominator, with
//! control limits around the national proportion, drawn as SVG on the server.
//!
//! # Control limits (exact binomial, Spiegelhalter 2005)
//!
//! For a national proportion `p0` and a denominator `n`, the number of events
//! of a unit that performs like the country is `X ~ Binomial(n, p0)`. The
//! limit at coverage `q` (0.025 and 0.975 for the 95 % limits, 0.001 and
//! 0.999 for 99.8 %) is the `q`-quantile of `X / n`, made continuous in `n`
//! by interpolation (D. J. Spiegelhalter, *Funnel plots for comparing
//! institutional performance*, Stat Med 2005;24:1185–1202, appendix A.1.1):
//!
//! ```text
//!   r = the smallest integer with P(X ≤ r) ≥ q
//!   α = (P(X ≤ r) − q) / (P(X ≤ r) − P(X ≤ r − 1))
//!   limit(n) = (r − α) / n
//! ```
//!
//! `P(X ≤ r)` is summed from the probability mass in log space
//! (`ln P(X = 0) = n ln(1 − p0)`, each next term multiplied by
//! `(n − k) / (k + 1) · p0 / (1 − p0)`), so it neither underflows for large
//! `n` nor needs a gamma function. A unit above the upper 99.8 % limit
//! (or below the lower one) is flagged as a possible outlier.

use std::fmt::Write as _;

/// Two-sided coverages of the limits drawn: 95 % and 99.8 %.
pub const LIMITS: [(f64, &str); 2] = [(0.95, "95 %"), (0.998, "99.8 %")];

/// `P(X ≤ r)` for `r = 0 ..` until it reaches `q`: returns `(r, P(X ≤ r), P(X ≤ r − 1))`.
fn quantile(n: u64, p: f64, q: f64) -> (u64, f64, f64) {
    if p <= 0.0 {
        return (0, 1.0, 0.0);
    }
    if p >= 1.0 {
        return (n, 1.0, 0.0);
    }
    let ratio = (p / (1.0 - p)).ln();
    let mut log_pmf = n as f64 * (1.0 - p).ln();
    let mut cdf = 0.0;
    for k in 0..=n {
        let before = cdf;
        cdf += log_pmf.exp();
        if cdf >= q {
            return (k, cdf, before);
        }
        log_pmf += ((n - k) as f64 / (k + 1) as f64).ln() + ratio;
    }
    (n, 1.0, cdf)
}

/// The `q`-limit of the proportion at denominator `n` around `p0` (see the module docs).
pub fn limit(n: u64, p0: f64, q: f64) -> f64 {
    if n == 0 {
        return p0;
    }
    let (r, at, below) = quantile(n, p0, q);
    let alpha = if at > below { (at - q) / (at - below) } else { 0.0 };
    ((r as f64 - alpha) / n as f64).clamp(0.0, 1.0)
}

/// Lower and upper limit at two-sided `coverage` (0.95, 0.998).
pub fn limits(n: u64, p0: f64, coverage: f64) -> (f64, f64) {
    let tail = (1.0 - coverage) / 2.0;
    (limit(n, p0, tail), limit(n, p0, 1.0 - tail))
}

/// One plotted unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub unit: String,
    /// The denominator as the query released it.
    pub denominator: u64,
    /// The indicator in percent as the query released it.
    pub percent: f64,
}

/// Where a unit lies against the 99.8 % limits around `p0_percent`.
pub fn outlier(point: &Point, p0_percent: f64) -> Option<&'static str> {
    let (low, high) = limits(point.denominator, p0_percent / 100.0, 0.998);
    if point.percent > high * 100.0 {
        Some("above the 99.8 % limit")
    } else if point.percent < low * 100.0 {
        Some("below the 99.8 % limit")
    } else {
        None
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `target` ticks up to `max`.
fn step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

/// The funnel plot as an SVG element: points, the national line and both
/// pairs of limits. Presentation attributes only (no `style`), so it renders
/// under a CSP without inline styles. Each point carries its released numbers
/// in `data-unit`, `data-denominator` and `data-percent`.
pub fn svg(title: &str, y_label: &str, x_label: &str, points: &[Point], p0_percent: f64) -> String {
    const W: f64 = 760.0;
    const H: f64 = 440.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 36.0;
    const BOTTOM: f64 = 56.0;
    let max_n = points.iter().map(|p| p.denominator).max().unwrap_or(10).max(10) as f64 * 1.08;
    // The curves start near zero so the funnel's shape shows, whatever the smallest unit.
    let min_n = (max_n / 200.0).max(1.0);
    let p0 = p0_percent / 100.0;
    // Curves from the smallest denominator shown to the right edge, evenly spaced on a square-root scale.
    let steps = 80;
    let ns: Vec<u64> = (0..=steps)
        .map(|i| {
            let t = i as f64 / steps as f64;
            let s = min_n.sqrt() + t * (max_n.sqrt() - min_n.sqrt());
            (s * s).round().max(1.0) as u64
        })
        .collect();
    let smallest = points.iter().map(|p| p.denominator).min().unwrap_or(1).max(1);
    let upper_at_min = limits(smallest, p0, 0.998).1 * 100.0;
    let max_point = points.iter().map(|p| p.percent).fold(0.0, f64::max);
    let max_y = (max_point.max(p0_percent * 2.0).max(upper_at_min.min(max_point.max(p0_percent) * 1.5)) * 1.1)
        .clamp(0.5, 100.0);
    let x = |n: f64| LEFT + n / max_n * (W - LEFT - RIGHT);
    let y = |pct: f64| TOP + (1.0 - pct / max_y) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="funnel" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-labelledby="funnel-title" data-national-percent="{p0_percent}">"##
    );
    let _ = write!(s, r#"<title id="funnel-title">{}</title>"#, esc(title));
    let _ = write!(
        s,
        r##"<defs><clipPath id="plot-area"><rect x="{LEFT}" y="{TOP}" width="{}" height="{}"/></clipPath></defs>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="#fafafa" stroke="#999"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    // Axes and ticks.
    let xs = step(max_n, 6.0);
    let mut t = 0.0;
    while t <= max_n {
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#999"/><text x="{0:.1}" y="{3}" text-anchor="middle" font-size="12" fill="#333">{4}</text>"##,
            x(t),
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 19.0,
            t
        );
        t += xs;
    }
    let ys = step(max_y, 6.0);
    let mut t = 0.0;
    while t <= max_y + 1e-9 {
        let _ = write!(
            s,
            r##"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="#e3e3e3"/><text x="{3}" y="{4:.1}" text-anchor="end" font-size="12" fill="#333">{5}</text>"##,
            LEFT,
            y(t),
            W - RIGHT,
            LEFT - 6.0,
            y(t) + 4.0,
            (t * 1000.0).round() / 1000.0
        );
        t += ys;
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="13" fill="#111">{}</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 14.0,
        esc(x_label)
    );
    let _ = write!(
        s,
        r##"<text x="16" y="{0}" text-anchor="middle" font-size="13" fill="#111" transform="rotate(-90 16 {0})">{1}</text>"##,
        (TOP + H - BOTTOM) / 2.0,
        esc(y_label)
    );
    // Limits and the national line, clipped to the plot area.
    let _ = write!(s, r##"<g clip-path="url(#plot-area)">"##);
    for (coverage, label) in LIMITS {
        let (colour, dash) = if coverage < 0.99 { ("#d08c00", "6 4") } else { ("#b00020", "2 3") };
        for side in [0, 1] {
            let pts: Vec<String> = ns
                .iter()
                .map(|&n| {
                    let (lo, hi) = limits(n, p0, coverage);
                    let v = if side == 0 { lo } else { hi };
                    format!("{:.1},{:.1}", x(n as f64), y(v * 100.0))
                })
                .collect();
            let _ = write!(
                s,
                r##"<polyline class="limit" data-coverage="{coverage}" points="{}" fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="{dash}"><title>{label} control limit</title></polyline>"##,
                pts.join(" ")
            );
        }
    }
    let _ = write!(
        s,
        r##"<line class="national" x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#1b5e20" stroke-width="1.5" data-percent="{2}"><title>National value {3:.2} %</title></line>"##,
        y(p0_percent),
        W - RIGHT,
        p0_percent,
        p0_percent
    );
    for p in points {
        let flagged = outlier(p, p0_percent).is_some();
        let fill = if flagged { "#b00020" } else { "#1f4e99" };
        let _ = write!(
            s,
            r##"<circle class="unit" cx="{:.1}" cy="{:.1}" r="4.5" fill="{fill}" fill-opacity="0.85" stroke="#fff" data-unit="{}" data-denominator="{}" data-percent="{}"><title>{}: {:.2} % of {}</title></circle>"##,
            x(p.denominator as f64),
            y(p.percent),
            esc(&p.unit),
            p.denominator,
            p.percent,
            esc(&p.unit),
            p.percent,
            p.denominator
        );
    }
    s.push_str("</g>");
    // Legend.
    let lx = W - RIGHT - 340.0;
    let items: [(&str, &str, &str); 3] =
        [("#1b5e20", "", "national value"), ("#d08c00", "6 4", "95 % limits"), ("#b00020", "2 3", "99.8 % limits")];
    for (i, (colour, dash, label)) in items.iter().enumerate() {
        let ly = TOP - 16.0;
        let ox = lx + i as f64 * 115.0;
        let _ = write!(
            s,
            r##"<line x1="{ox}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}" font-size="11" fill="#333">{label}</text>"##,
            ox + 18.0,
            ox + 22.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binomial(100, 0.1): P(X ≤ 4) = 0.02371, P(X ≤ 5) = 0.05758,
    /// P(X ≤ 15) = 0.96011, P(X ≤ 16) = 0.97940 (R: pbinom).
    #[test]
    fn quantiles_match_r() {
        let (r, at, below) = quantile(100, 0.1, 0.025);
        assert_eq!(r, 5);
        assert!((at - 0.057_576).abs() < 1e-5 && (below - 0.023_711).abs() < 1e-5, "{at} {below}");
        let (r, at, below) = quantile(100, 0.1, 0.975);
        assert_eq!(r, 16);
        assert!((at - 0.979_401).abs() < 1e-5 && (below - 0.960_109).abs() < 1e-5, "{at} {below}");
        // Interpolated: (5 - (0.057576 - 0.025) / (0.057576 - 0.023711)) / 100.
        let lo = limit(100, 0.1, 0.025);
        assert!((lo - (5.0 - (0.057_576 - 0.025) / (0.057_576 - 0.023_711)) / 100.0).abs() < 1e-6, "{lo}");
    }

    #[test]
    fn limits_narrow_with_n_and_approach_the_normal_approximation() {
        let p0 = 0.03;
        let (lo_small, hi_small) = limits(50, p0, 0.95);
        let (lo_big, hi_big) = limits(20_000, p0, 0.95);
        assert!(lo_small <= lo_big && hi_small > hi_big);
        let half = 1.959_964 * (p0 * (1.0 - p0) / 20_000.0f64).sqrt();
        assert!((hi_big - (p0 + half)).abs() < 3e-4, "{hi_big} vs {}", p0 + half);
        assert!((lo_big - (p0 - half)).abs() < 3e-4, "{lo_big} vs {}", p0 - half);
        let (lo998, hi998) = limits(20_000, p0, 0.998);
        assert!(lo998 < lo_big && hi998 > hi_big, "99.8 % limits lie outside the 95 % ones");
        // Large n does not underflow.
        let (lo, hi) = limits(1_000_000, 0.02, 0.998);
        assert!(lo > 0.019 && hi < 0.021, "{lo} {hi}");
    }

    #[test]
    fn svg_carries_the_plotted_numbers_and_escapes_names() {
        let points = vec![
            Point { unit: "Sankt Görans <sjukhus>".into(), denominator: 412, percent: 1.4563106796116505 },
            Point { unit: "Danderyd".into(), denominator: 97, percent: 9.278350515463918 },
        ];
        let svg = svg("t", "90-day mortality (%)", "operations", &points, 1.5);
        assert!(
            svg.contains(
                r#"data-unit="Sankt Görans &lt;sjukhus&gt;" data-denominator="412" data-percent="1.4563106796116505""#
            ),
            "{svg}"
        );
        assert!(!svg.contains("style="), "no inline styles under the CSP");
        assert_eq!(svg.matches("<circle class=\"unit\"").count(), 2);
        assert_eq!(svg.matches("class=\"limit\"").count(), 4);
        assert_eq!(outlier(&points[1], 1.5), Some("above the 99.8 % limit"));
        assert_eq!(outlier(&points[0], 1.5), None);
    }
}
