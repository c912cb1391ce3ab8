//! Server-rendered SVG charts of a function's last 24 hours (hourly buckets from
//! `common::fnmetrics`, never a scan of runs): invocations as bars with the failed, timed-out
//! and throttled part in red, and the p50 duration as bars. Pure SVG, no script, so they show
//! without JavaScript; the SVG holds only numbers and fixed labels (no user text).

use common::fnmetrics::Bucket;

const W: u64 = 480;
const H: u64 = 120;
const PAD: u64 = 18;

/// One chart: `values` as (total, red part) bars, with a title and the maximum on the axis.
fn bars(title: &str, unit: &str, values: &[(u64, u64)]) -> String {
    let n = values.len().max(1) as u64;
    let max = values.iter().map(|v| v.0).max().unwrap_or(0).max(1);
    let slot = (W - 2 * PAD) / n;
    let bar = slot.saturating_sub(2).max(1);
    let plot = H - 2 * PAD;
    let mut out = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{title}\" viewBox=\"0 0 {W} {H}\" width=\"100%\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>{title}</title>\
         <text x=\"{PAD}\" y=\"12\" font-size=\"11\">{title}</text>\
         <text x=\"{}\" y=\"12\" font-size=\"10\" text-anchor=\"end\">max {max}{unit}</text>\
         <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
        W - PAD,
        H - PAD,
        W - PAD,
        H - PAD
    );
    for (i, (total, red)) in values.iter().enumerate() {
        let x = PAD + i as u64 * slot;
        let h = total * plot / max;
        let rh = red.min(total) * plot / max;
        if h > 0 {
            out.push_str(&format!(
                "<rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" fill=\"#4a7bd0\"><title>{total}{unit}</title></rect>",
                H - PAD - h
            ));
        }
        if rh > 0 {
            out.push_str(&format!(
                "<rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{rh}\" fill=\"#d04a4a\"><title>{red} not succeeded</title></rect>",
                H - PAD - rh
            ));
        }
    }
    out.push_str(&format!(
        "<text x=\"{PAD}\" y=\"{}\" font-size=\"10\">24 h ago</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">now</text></svg>",
        H - 4,
        W - PAD,
        H - 4
    ));
    out
}

/// The function page's charts.
pub fn function_charts(buckets: &[Bucket]) -> String {
    let invocations: Vec<(u64, u64)> = buckets
        .iter()
        .map(|b| (b.invocations, b.failed + b.timed_out + b.throttled))
        .collect();
    let p50: Vec<(u64, u64)> = buckets
        .iter()
        .map(|b| (b.percentile_ms(0.5).unwrap_or(0), 0))
        .collect();
    let cold: Vec<(u64, u64)> = buckets.iter().map(|b| (b.cold_starts, 0)).collect();
    [
        bars(
            "Invocations per hour (red: failed, timed out, throttled)",
            "",
            &invocations,
        ),
        bars("Duration p50 per hour", " ms", &p50),
        bars("Cold starts per hour", "", &cold),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_a_bar_per_busy_bucket() {
        let mut b = vec![Bucket::default(); 24];
        b[23].invocations = 10;
        b[23].failed = 3;
        b[23].durations[5] = 10;
        let svg = function_charts(&b);
        assert_eq!(svg.matches("<svg").count(), 3);
        assert!(svg.contains("<title>10</title>") && svg.contains("3 not succeeded"));
        assert!(svg.contains("max 50 ms"));
        assert!(svg.len() < 8_000, "{}", svg.len());
        assert!(!function_charts(&vec![Bucket::default(); 24]).contains("<rect"));
    }
}
