//! The report as one self-contained HTML page: inline CSS, an inline SVG
//! chart of failures over time per category (stacked bars, one per time
//! bucket), then the report's tables. No scripts, fonts, images or links to
//! anything outside the file; a Content-Security-Policy forbids loading
//! any, so even text that escaped escaping could not run. Every string from
//! the database goes through [`escape`].

use std::fmt::Write;

use super::{human, Change, Report, OTHER};

/// Colours of the chart's series, in order (distinct in common colour
/// blindness); the `(other)` series is grey.
const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
];
const OTHER_COLOUR: &str = "#bab0ac";

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 12.0;

/// Text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn colour(i: usize, category: &str) -> &'static str {
    if category == OTHER {
        OTHER_COLOUR
    } else {
        PALETTE[i % PALETTE.len()]
    }
}

/// The page.
pub fn render(r: &Report) -> String {
    let mut h = String::new();
    let len = human(r.period.seconds);
    let title = match &r.queue {
        Some(q) => format!("Failed runs in queue {q}"),
        None => "Failed runs".to_string(),
    };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <title>{} {} to {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&title),
        escape(&r.period.from),
        escape(&r.period.until)
    );
    let _ = writeln!(h, "<h1>{}</h1>", escape(&title));
    let _ = writeln!(
        h,
        "<p>{} to {} ({len}), compared with the {len} before. Lookout schema generation {}: \
         categories from {}; exit codes from {}; messages from {}.</p>",
        escape(&r.period.from),
        escape(&r.period.until),
        escape(&r.generation),
        escape(r.sources.category),
        escape(r.sources.exit_code),
        escape(r.sources.message)
    );
    let t = &r.total;
    let _ = writeln!(
        h,
        "<p class=\"total\"><b>{}</b> failed run(s); previous period {}; change {}</p>",
        t.runs,
        t.previous,
        escape(&t.to_string())
    );
    h.push_str("<h2>Failures over time, by category</h2>\n");
    chart(&mut h, r);
    h.push_str("<h2>By queue and category</h2>\n<table>\n<tr><th>Queue</th><th>Category</th><th>Subcategory</th>");
    h.push_str(COUNT_HEADERS);
    for row in &r.by_category.rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            escape(&row.queue),
            escape(&row.category),
            escape(row.subcategory.as_deref().unwrap_or("-"))
        );
        counts(&mut h, &row.counts);
    }
    if r.by_category.other.runs + r.by_category.other.previous > 0 {
        let _ = write!(h, "<tr><td>{OTHER}</td><td>{OTHER}</td><td>-</td>");
        counts(&mut h, &r.by_category.other);
    }
    h.push_str("</table>\n<h2>By exit code</h2>\n<table>\n<tr><th>Exit code</th>");
    h.push_str(COUNT_HEADERS);
    for row in &r.by_exit_code.rows {
        let code = row
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into());
        let _ = write!(h, "<tr><td class=\"n\">{code}</td>");
        counts(&mut h, &row.counts);
    }
    if r.by_exit_code.other.runs + r.by_exit_code.other.previous > 0 {
        let _ = write!(h, "<tr><td>{OTHER}</td>");
        counts(&mut h, &r.by_exit_code.other);
    }
    h.push_str("</table>\n<h2>Most common messages</h2>\n<table>\n<tr><th>Runs</th><th>Message</th></tr>\n");
    let m = &r.messages;
    for row in &m.top {
        let _ = writeln!(
            h,
            "<tr><td class=\"n\">{}</td><td class=\"msg\">{}</td></tr>",
            row.runs,
            escape(&row.message)
        );
    }
    for (n, what) in [
        (m.other_runs, "(other messages)"),
        (m.missing, "(no message)"),
        (m.unreadable, "(error text not readable)"),
    ] {
        if n > 0 {
            let _ = writeln!(h, "<tr><td class=\"n\">{n}</td><td><i>{what}</i></td></tr>");
        }
    }
    h.push_str("</table>\n</body>\n</html>\n");
    h
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:72em}\
table{border-collapse:collapse;margin-bottom:2em}\
th,td{border-bottom:1px solid #ddd;padding:.25em .75em;text-align:left;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
td.msg{font-family:monospace;white-space:pre-wrap;word-break:break-all}\
.up{color:#b00}.down{color:#070}\
.legend span{display:inline-block;margin-right:1.2em}\
.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}\
svg text{font-size:11px;fill:#555}";

const COUNT_HEADERS: &str = "<th>Runs</th><th>Previous</th><th>Change</th></tr>\n";

fn counts(h: &mut String, c: &Change) {
    let class = match c.change {
        0 => "",
        x if x > 0 => " up",
        _ => " down",
    };
    let _ = writeln!(
        h,
        "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{class}\">{}</td></tr>",
        c.runs,
        c.previous,
        escape(&c.to_string())
    );
}

/// The stacked bar chart and its legend.
fn chart(h: &mut String, r: &Report) {
    let tl = &r.timeline;
    let buckets = tl.starts.len().max(1);
    let totals: Vec<u64> = (0..buckets)
        .map(|i| {
            tl.series
                .iter()
                .map(|s| s.counts.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / buckets as f64;
    let bar = (slot * 0.8).max(1.0);
    let y = |n: u64| TOP + plot_h - plot_h * n as f64 / max as f64;
    let _ = writeln!(
        h,
        "<svg role=\"img\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\">\n\
         <title>Failed runs per {} by category</title>",
        human(tl.bucket_seconds)
    );
    // Axes and the scale: 0 and the tallest bar.
    let _ = writeln!(
        h,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">0</text>\
         <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{max}</text>",
        b = TOP + plot_h,
        r = LEFT + plot_w,
        tx = LEFT - 4.0,
        ty = TOP + 10.0,
    );
    for i in 0..buckets {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut below = 0u64;
        for (si, s) in tl.series.iter().enumerate() {
            let n = s.counts.get(i).copied().unwrap_or(0);
            if n == 0 {
                continue;
            }
            let top = y(below + n);
            let height = y(below) - top;
            let start = tl.starts.get(i).map(String::as_str).unwrap_or("");
            let _ = writeln!(
                h,
                "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{bar:.1}\" height=\"{height:.1}\" fill=\"{}\">\
                 <title>{}: {n} from {}</title></rect>",
                colour(si, &s.category),
                escape(&s.category),
                escape(start)
            );
            below += n;
        }
    }
    // About six time labels along the axis.
    let every = buckets.div_ceil(6).max(1);
    for (i, start) in tl.starts.iter().enumerate().step_by(every) {
        let x = LEFT + slot * i as f64;
        let _ = writeln!(
            h,
            "<text x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
            TOP + plot_h + 16.0,
            // `MM-DD HH:MM` of the RFC 3339 start.
            escape(&start.get(5..16).unwrap_or(start).replace('T', " "))
        );
    }
    h.push_str("</svg>\n<p class=\"legend\">");
    if tl.series.is_empty() {
        h.push_str("No failed runs in this period.");
    }
    for (si, s) in tl.series.iter().enumerate() {
        let _ = write!(
            h,
            "<span><i style=\"background:{}\"></i>{} ({})</span>",
            colour(si, &s.category),
            escape(&s.category),
            s.counts.iter().sum::<u64>()
        );
    }
    h.push_str("</p>\n");
}
