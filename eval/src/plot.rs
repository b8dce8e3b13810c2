//! Plots as SVG (plotters' SVG backend: no fonts or image libraries needed): log-scale line
//! plots, linear line plots and heatmaps.

use std::path::Path;

use plotters::prelude::*;

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PlotError {
    pub path: std::path::PathBuf,
    pub message: String,
}

type Canvas<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

/// Checks the file name, draws on a white SVG canvas and writes it (atomically: a killed run
/// leaves the previous plot or none, never half of one), naming the file in any error.
fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Canvas) -> Drawn) -> Result<(), PlotError> {
    check_svg(path)?;
    let mut svg = String::new();
    let drawn = (|| -> Drawn {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| failed(path, e))?;
    coil_files::write_atomically(path, |temporary| std::fs::write(temporary, &svg)).map_err(|e| PlotError { path: path.to_owned(), message: e.to_string() })
}

/// The frame every plot shares: title, margin and axis label areas.
fn frame<'a, 'b>(root: &'a Canvas<'b>, title: &str, y_label_area: u32) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, ("sans-serif", 18)).margin(15).x_label_area_size(45).y_label_area_size(y_label_area);
    builder
}

/// An error unless `path` names an SVG file (the only format the plots are written in): for
/// commands to check their plot paths before the work that feeds them.
pub fn check_svg(path: &Path) -> Result<(), PlotError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => Ok(()),
        _ => Err(PlotError { path: path.to_owned(), message: "plots are written as SVG; give a file name ending in .svg".into() }),
    }
}

fn failed(path: &Path, error: impl std::fmt::Display) -> PlotError {
    PlotError { path: path.to_owned(), message: format!("cannot draw the plot: {error}") }
}

/// One line per `(label, points)`, log-scaled y, an optional dashed vertical marker.
pub fn lines(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(u64, f32)>)], marker: Option<u64>) -> Result<(), PlotError> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (x_max, y_min, y_max) = points.fold((1u64, f32::INFINITY, 0f32), |(x, lo, hi), &(px, py)| {
        (x.max(px), if py > 0.0 { lo.min(py) } else { lo }, hi.max(py))
    });
    let (y_min, y_max) = if y_min.is_finite() { (y_min * 0.8, (y_max * 1.25).max(y_min * 1.01)) } else { (1e-3, 1.0) };
    render(path, (960, 600), |root| {
        let mut chart = frame(root, title, 70)
            .build_cartesian_2d(0u64..x_max, (y_min..y_max).log_scale().with_key_points(log_ticks(y_min, y_max)))?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).y_labels(10).y_label_formatter(&|v| tick_label(*v as f64)).draw()?;
        for (i, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.iter().filter(|p| p.1 > 0.0).copied(), color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        if let Some(x) = marker.filter(|&x| x <= x_max) {
            chart.draw_series(DashedLineSeries::new(vec![(x, y_min), (x, y_max)], 6, 4, BLACK.mix(0.5).into()))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        Ok(())
    })
}

/// `0.0123`, `14.79`, or `3.2e-7` when plain digits would not fit.
fn tick_label(v: f64) -> String {
    if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// `0.001`, `0.5`, `12`, `1000`: three significant digits at most, no trailing zeros (a log
/// axis spanning decades).
fn compact(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

/// Eight ticks evenly spaced in log space: readable whether the range spans 1% or 10 decades.
fn log_ticks(low: f32, high: f32) -> Vec<f32> {
    let (a, b) = (low.ln(), high.ln());
    (0..8).map(|i| (a + (b - a) * (i as f32 + 0.5) / 8.0).exp()).collect()
}

/// Accuracy (0..1) against length on a log2 x axis, one line per series, the training length
/// dashed when known. The x labels are the lengths swept (at most a dozen of them).
pub fn accuracy_curves(path: &Path, title: &str, series: &[(String, Vec<(usize, f64)>)], train_length: Option<usize>) -> Result<(), PlotError> {
    let mut lengths: Vec<usize> = series.iter().flat_map(|(_, p)| p.iter().map(|&(l, _)| l)).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let (x_min, x_max) = match (lengths.first(), lengths.last()) {
        (Some(&lo), Some(&hi)) => (lo as f64 / 1.2, (hi as f64 * 1.2).max(lo as f64 * 2.0)),
        _ => (1.0, 2.0),
    };
    let every = lengths.len().div_ceil(12).max(1);
    let keys: Vec<f64> = lengths.iter().step_by(every).map(|&l| l as f64).collect();
    render(path, (900, 560), |root| {
        let mut chart = frame(root, title, 55).build_cartesian_2d((x_min..x_max).log_scale().with_key_points(keys), 0f64..1.02f64)?;
        chart
            .configure_mesh()
            .x_desc("context length (tokens)")
            .y_desc("passkey accuracy")
            .x_label_formatter(&|v| format_length(v.round() as usize))
            .draw()?;
        for (i, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = points.iter().map(|&(l, a)| (l as f64, a)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        if let Some(t) = train_length {
            chart.draw_series(DashedLineSeries::new(vec![(t as f64, 0.0), (t as f64, 1.02)], 6, 4, BLACK.mix(0.5).into()))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::LowerLeft).draw()?;
        Ok(())
    })
}

/// Red (0) to green (1).
fn accuracy_color(a: f64) -> RGBAColor {
    RGBColor((255.0 * (1.0 - a)) as u8, (200.0 * a) as u8, 60).to_rgba()
}

/// Accuracy per (depth bin, length) as coloured cells, red (0) to green (1), empty cells grey,
/// with the colour scale beside it.
pub fn heatmap(path: &Path, title: &str, lengths: &[usize], cells: &[Vec<Option<f64>>]) -> Result<(), PlotError> {
    let (columns, rows) = (lengths.len(), cells.len());
    render(path, (960, 560), |root| {
        let (left, right) = root.split_horizontally(860);
        let mut chart = frame(&left, title, 55).build_cartesian_2d(0f64..columns as f64, 0f64..rows as f64)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("context length (tokens)")
            .y_desc("needle depth")
            .x_labels(columns.min(16))
            .y_labels(rows + 1)
            .x_label_formatter(&|v| lengths.get(v.floor() as usize).map_or(String::new(), |&l| format_length(l)))
            .y_label_formatter(&|v| format!("{:.1}", v / rows as f64))
            .draw()?;
        for (r, row) in cells.iter().enumerate() {
            for (c, value) in row.iter().enumerate() {
                let color = value.map_or(RGBColor(220, 220, 220).to_rgba(), accuracy_color);
                chart.draw_series(std::iter::once(Rectangle::new([(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)], color.filled())))?;
            }
        }
        // The scale: accuracy 0..1 as a column of the same colours.
        let mut scale = ChartBuilder::on(&right);
        scale.margin_top(48).margin_bottom(60).margin_right(10).y_label_area_size(45);
        let mut scale = scale.build_cartesian_2d(0f64..1.0, 0f64..1.0)?;
        scale
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(5)
            .y_label_style(("sans-serif", 14))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()?;
        const STEPS: usize = 50;
        scale.draw_series((0..STEPS).map(|i| {
            let (lo, hi) = (i as f64 / STEPS as f64, (i + 1) as f64 / STEPS as f64);
            Rectangle::new([(0.0, lo), (1.0, hi)], accuracy_color((lo + hi) / 2.0).filled())
        }))?;
        Ok(())
    })
}

/// One arm of a law plot: its measured points and, where the data carried one, its fit.
#[derive(Clone, Debug)]
pub struct LawSeries {
    pub label: String,
    /// `(N_S in millions, value in thousands of tokens)`.
    pub points: Vec<(f64, f64)>,
    /// `(a, b, c)` of `a (b^N_S - 1) + c`.
    pub fit: Option<(f64, f64, f64)>,
}

/// A law against state size on log-log axes: the measured points per arm, each arm's fit over
/// the range of its data, and (with `paper`) the paper's capacity fit where it is positive.
/// The axes span all three, so a family of tiny models and the paper's millions of state
/// elements are visible on one plot.
pub fn law(path: &Path, title: &str, y_label: &str, series: &[LawSeries], paper: bool) -> Result<(), PlotError> {
    let paper_fit = |x: f64| 4.756 * (1.365f64.powf(x) - 1.0) - 0.742;
    let sample = |lo: f64, hi: f64, f: &dyn Fn(f64) -> f64| -> Vec<(f64, f64)> {
        (0..=200).map(|i| lo * (hi / lo).powf(i as f64 / 200.0)).map(|x| (x, f(x))).filter(|p| p.1 > 0.0 && p.1.is_finite()).collect()
    };
    let fitted: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let (lo, hi) = s.points.iter().fold((f64::INFINITY, 0f64), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
            match s.fit {
                Some((a, b, c)) if lo.is_finite() && lo > 0.0 => sample(lo / 1.5, hi * 1.5, &move |x| a * (b.powf(x) - 1.0) + c),
                _ => Vec::new(),
            }
        })
        .collect();
    let paper_curve = if paper { sample(0.3, 20.0, &paper_fit) } else { Vec::new() };
    let all = series.iter().flat_map(|s| s.points.iter()).chain(fitted.iter().flatten()).chain(&paper_curve).filter(|p| p.0 > 0.0 && p.1 > 0.0);
    let (x_lo, x_hi, y_lo, y_hi) = all.fold((f64::INFINITY, 0f64, f64::INFINITY, 0f64), |(a, b, c, d), p| (a.min(p.0), b.max(p.0), c.min(p.1), d.max(p.1)));
    let (x_lo, x_hi, y_lo, y_hi) = if x_lo.is_finite() { (x_lo / 1.5, x_hi * 1.5, y_lo / 1.5, y_hi * 1.5) } else { (1e-3, 1.0, 0.1, 10.0) };
    render(path, (900, 560), |root| {
        let mut chart = frame(root, title, 70).build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("N_S (million state elements, log)")
            .y_desc(format!("{y_label}, log"))
            .x_label_formatter(&|v| compact(*v))
            .y_label_formatter(&|v| compact(*v))
            .draw()?;
        if !paper_curve.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(paper_curve.clone(), 6, 4, BLACK.mix(0.6).into()))?
                .label("paper: 4.756 (1.365^N_S - 1) - 0.742")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.6)));
        }
        for (i, (s, curve)) in series.iter().zip(&fitted).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(s.points.iter().filter(|p| p.0 > 0.0 && p.1 > 0.0).map(|&p| Circle::new(p, 5, color.filled())))?
                .label(if curve.is_empty() { s.label.clone() } else { format!("{} (and its fit)", s.label) })
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
            if !curve.is_empty() {
                chart.draw_series(LineSeries::new(curve.clone(), color.stroke_width(2)))?;
            }
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::UpperLeft).draw()?;
        Ok(())
    })
}

/// `512`, `4k`, `1m`.
pub fn format_length(tokens: usize) -> String {
    if tokens >= 1 << 20 && tokens.is_multiple_of(1 << 20) {
        format!("{}m", tokens >> 20)
    } else if tokens >= 1024 && tokens.is_multiple_of(1024) {
        format!("{}k", tokens >> 10)
    } else {
        tokens.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn compact_labels_keep_three_digits_and_drop_trailing_zeros() {
        for (v, text) in [(0.001, "0.001"), (0.5, "0.5"), (12.0, "12"), (1000.0, "1000"), (1.365, "1.36"), (0.01234, "0.0123")] {
            assert_eq!(super::compact(v), text, "{v}");
        }
    }
}
