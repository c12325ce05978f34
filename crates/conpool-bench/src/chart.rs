//! The two SVG charts of BENCHMARKS.md, drawn with plotters' SVG backend.
//!
//! No font feature is enabled: plotters estimates text extents itself and
//! the SVG backend writes plain `<text>` elements that the viewer renders,
//! so nothing here needs fontconfig or a system font.

use std::path::Path;

use plotters::prelude::*;

/// Bar colours, one per pool, conpool first.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0xd6, 0x4f, 0x1f),
    RGBColor(0x3b, 0x6e, 0xa8),
    RGBColor(0x4d, 0x9a, 0x56),
    RGBColor(0x8e, 0x6b, 0xb1),
    RGBColor(0x9a, 0x8a, 0x3a),
    RGBColor(0x6b, 0x6b, 0x6b),
];

/// One panel of the overhead chart: a title and a value per pool.
pub struct Panel<'a> {
    /// e.g. "1 task over 1 connection".
    pub title: &'a str,
    /// `(pool, ns per acquire+release)`, conpool first.
    pub bars: &'a [(&'a str, f64)],
    /// A dashed line for the target, if any.
    pub target: Option<(&'a str, f64)>,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Bars of ns per acquire+release, one panel per scenario, stacked.
pub fn overhead(path: &Path, caption: &str, panels: &[Panel<'_>]) -> Result<()> {
    let height = 60 + 330 * panels.len() as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, ("sans-serif", 22))?;
    for (area, panel) in root
        .split_evenly((panels.len(), 1))
        .iter()
        .zip(panels.iter())
    {
        let n = panel.bars.len();
        let top = panel
            .bars
            .iter()
            .map(|b| b.1)
            .chain(panel.target.map(|t| t.1))
            .fold(0f64, f64::max)
            * 1.18;
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top.max(1.0))?;
        let names: Vec<String> = panel.bars.iter().map(|b| b.0.to_string()).collect();
        let label = move |x: &f64| -> String {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&label)
            .x_label_style(("sans-serif", 13))
            .y_desc("ns per acquire + release")
            .y_label_style(("sans-serif", 12))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(panel.bars.iter().enumerate().map(|(i, (_, v))| {
            let x = i as f64;
            Rectangle::new(
                [(x - 0.33, 0.0), (x + 0.33, *v)],
                PALETTE[i % PALETTE.len()].filled(),
            )
        }))?;
        chart.draw_series(panel.bars.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format_ns(*v),
                (i as f64 - 0.2, *v + top * 0.06),
                ("sans-serif", 13).into_font(),
            )
        }))?;
        if let Some((name, t)) = panel.target {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(-0.5, t), (n as f64 - 0.5, t)],
                    6,
                    4,
                    BLACK.stroke_width(1),
                ))?
                .label(name)
                .legend(|(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (6, 0)], BLACK)
                        + PathElement::new(vec![(10, 0), (16, 0)], BLACK)
                });
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 12))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

/// One line of the scale chart: `(endpoints, ns per acquire+release)`.
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Points, by increasing endpoint count.
    pub points: &'a [(f64, f64)],
}

/// Cost per acquire+release against the number of endpoints, log x axis.
pub fn scale(path: &Path, caption: &str, series: &[Series<'_>]) -> Result<()> {
    let root = SVGBackend::new(path, (960, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0f64, f64::max)
        * 1.15;
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1f64, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(46)
        .y_label_area_size(70)
        .build_cartesian_2d((0.7f64..x_max).log_scale(), 0f64..top.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("endpoints, each with an idle connection (log scale)")
        .y_desc("ns per acquire + release")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|x| format_count(*x))
        .x_label_style(("sans-serif", 12))
        .y_label_style(("sans-serif", 12))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}

/// `842 ns`, `1.62 µs`.
pub fn format_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn format_count(x: f64) -> String {
    let r = x.round();
    if (x - r).abs() > 1e-6 * x.max(1.0) {
        return String::new();
    }
    match r as u64 {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}
