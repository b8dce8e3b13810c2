//! Line plots as SVG (plotters' SVG backend: no fonts or image libraries needed).

use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

/// One line per `(label, points)`, log-scaled y, an optional dashed vertical marker.
pub fn lines(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(u64, f32)>)], marker: Option<u64>) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!("{}: plots are written as SVG; give a file name ending in .svg", path.display());
    }
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (x_max, y_min, y_max) = points.fold((1u64, f32::INFINITY, 0f32), |(x, lo, hi), &(px, py)| {
        (x.max(px), if py > 0.0 { lo.min(py) } else { lo }, hi.max(py))
    });
    let (y_min, y_max) = if y_min.is_finite() { (y_min * 0.8, (y_max * 1.25).max(y_min * 1.01)) } else { (1e-3, 1.0) };
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0u64..x_max, (y_min..y_max).log_scale())?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).y_labels(10).y_label_formatter(&|v| format!("{v:.3e}")).draw()?;
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
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("cannot write the plot {}", path.display()))
}
