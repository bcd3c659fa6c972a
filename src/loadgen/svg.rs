//! The chart `--svg` writes: latency percentiles per second above,
//! throughput per second below, on a shared time axis. Hand-written SVG, so
//! the harness needs no plotting library; any browser shows it.

use super::report::Report;
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PANEL_H: f64 = 200.0;
/// Top of the latency panel and of the throughput panel.
const TOPS: [f64; 2] = [70.0, 330.0];
const HEIGHT: f64 = 570.0;

/// A series to draw: its name, colour and one value per second.
struct Line<'a> {
    name: &'a str,
    colour: &'a str,
    /// Dashed, so a line it often covers (max over p99) stays visible.
    dashed: bool,
    values: Vec<f64>,
}

/// The chart as an SVG document.
pub fn render(report: &Report) -> String {
    let seconds = report.series.len().max(1);
    let series = &report.series;
    let latency = [
        Line {
            name: "p50",
            colour: "#1f77b4",
            dashed: false,
            values: series.iter().map(|s| s.p50_ms).collect(),
        },
        Line {
            name: "p99",
            colour: "#ff7f0e",
            dashed: false,
            values: series.iter().map(|s| s.p99_ms).collect(),
        },
        Line {
            name: "max",
            colour: "#d62728",
            dashed: true,
            values: series.iter().map(|s| s.max_ms).collect(),
        },
    ];
    let throughput = [
        Line {
            name: "sent/s",
            colour: "#7f7f7f",
            dashed: false,
            values: series.iter().map(|s| s.sent as f64).collect(),
        },
        Line {
            name: "final/s",
            colour: "#2ca02c",
            dashed: false,
            values: series.iter().map(|s| s.finished as f64).collect(),
        },
        Line {
            name: "confirmed/s",
            colour: "#9467bd",
            dashed: false,
            values: series.iter().map(|s| s.confirmed as f64).collect(),
        },
        Line {
            name: "errors/s",
            colour: "#d62728",
            dashed: false,
            values: series.iter().map(|s| s.errors as f64).collect(),
        },
    ];

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    let c = &report.config;
    let load = match (c.rate, c.concurrency) {
        (Some(rate), _) => format!("open loop, {rate} orders/s"),
        (_, Some(n)) => format!("closed loop, {n} workers"),
        _ => String::new(),
    };
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        escape(&format!("shop loadgen: {load}, mix {}", c.mix))
    );
    let l = &report.latency_ms;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="44">{}</text>"#,
        escape(&format!(
            "{} final of {} sent, {} errors; {:.1} final/s; create to final p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            report.counts.finished,
            report.counts.sent,
            report.counts.errors,
            report.throughput.finished_per_s,
            l.p50,
            l.p99,
            l.p999,
            l.max
        ))
    );
    panel(&mut svg, TOPS[0], "latency (ms)", &latency, seconds);
    panel(&mut svg, TOPS[1], "per second", &throughput, seconds);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since start</text>"#,
        LEFT + PLOT_W / 2.0,
        HEIGHT - 8.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// One panel: axes, grid, y ticks, x ticks, the lines and their legend.
fn panel(svg: &mut String, top: f64, title: &str, lines: &[Line<'_>], seconds: usize) {
    let max = lines
        .iter()
        .flat_map(|l| l.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (step, y_max) = nice_scale(max);
    let bottom = top + PANEL_H;
    let x = |second: f64| LEFT + PLOT_W * second / seconds as f64;
    let y = |value: f64| bottom - PANEL_H * (value / y_max).clamp(0.0, 1.0);

    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
        top - 8.0,
        escape(title)
    );
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#e0e0e0"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(tick),
            LEFT + PLOT_W,
            LEFT - 6.0,
            y(tick) + 4.0,
            format_tick(tick)
        );
        tick += step;
    }
    let (x_step, _) = nice_scale(seconds as f64);
    let x_step = x_step.max(1.0);
    let mut second = 0.0;
    while second <= seconds as f64 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{bottom}" x2="{0:.1}" y2="{1}" stroke="#000000"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            x(second),
            bottom + 4.0,
            bottom + 16.0,
            format_tick(second)
        );
        second += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top}" width="{PLOT_W}" height="{PANEL_H}" fill="none" stroke="#000000"/>"##
    );
    for (i, line) in lines.iter().enumerate() {
        // Each second's value is drawn at the middle of that second.
        let points: Vec<String> = line
            .values
            .iter()
            .enumerate()
            .map(|(s, v)| format!("{:.1},{:.1}", x(s as f64 + 0.5), y(*v)))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5"{} points="{}"/>"#,
                line.colour,
                if line.dashed {
                    r#" stroke-dasharray="6 3""#
                } else {
                    ""
                },
                points.join(" ")
            );
        }
        let legend_y = top + 14.0 + 18.0 * i as f64;
        let legend_x = LEFT + PLOT_W + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x}" y1="{0}" x2="{1}" y2="{0}" stroke="{2}" stroke-width="3"/><text x="{3}" y="{4}">{5}</text>"#,
            legend_y,
            legend_x + 20.0,
            line.colour,
            legend_x + 26.0,
            legend_y + 4.0,
            escape(line.name)
        );
    }
}

/// A tick step of 1, 2 or 5 × 10^k giving about five ticks up to `max`,
/// and the axis top (a multiple of the step, at least `max`).
fn nice_scale(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 1.0);
    }
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * magnitude);
    (step, (max / step).ceil() * step)
}

fn format_tick(value: f64) -> String {
    if value.fract().abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Text escaped for XML content and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_round_numbers() {
        assert_eq!(nice_scale(0.0), (1.0, 1.0));
        assert_eq!(nice_scale(97.0), (20.0, 100.0));
        assert_eq!(nice_scale(3.0), (1.0, 3.0));
        assert_eq!(nice_scale(1234.0), (500.0, 1500.0));
        assert_eq!(format_tick(0.5), "0.5");
        assert_eq!(format_tick(20.0), "20");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
