//! Inline SVG charts for the HTML report, drawn with plotters into strings
//! (no files, no scripts: the report opens offline).

use plotters::prelude::*;

const W: u32 = 640;
const H: u32 = 300;

/// A bar per label, with a line at `expected`.
pub fn bars(title: &str, labels: &[String], values: &[u64], expected: f64) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let max = values
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(expected.ceil() as u64)
            .max(1) as f64
            * 1.15;
        let n = labels.len().max(1) as u32;
        let chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(if n > 12 { 24 } else { 40 })
            .y_label_area_size(48)
            .build_cartesian_2d((0..n).into_segmented(), 0f64..max);
        let Ok(mut chart) = chart else {
            return svg_error(title);
        };
        let short: Vec<String> = labels
            .iter()
            .map(|l| l.rsplit('/').next().unwrap_or("").to_string())
            .collect();
        // Name each bar under its centre when they fit; else number them.
        let label_of = move |x: &SegmentValue<u32>| match x {
            SegmentValue::CenterOf(i) if n <= 12 => {
                short.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::CenterOf(i) => i.to_string(),
            _ => String::new(),
        };
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .y_desc("connections")
            .x_labels(n.min(25) as usize)
            .x_label_formatter(&label_of);
        if n > 12 {
            mesh.x_desc("endpoint (see the table)");
        }
        let _ = mesh.draw();
        let _ = chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            let i = i as u32;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v as f64),
                ],
                RGBColor(70, 120, 190).filled(),
            );
            bar.set_margin(0, 0, 3, 3);
            bar
        }));
        let _ = chart.draw_series(LineSeries::new(
            [
                (SegmentValue::Exact(0), expected),
                (SegmentValue::Last, expected),
            ],
            ShapeStyle::from(&RGBColor(200, 60, 60)).stroke_width(2),
        ));
        let _ = root.present();
    }
    svg
}

/// One line per series over a shared x axis (Service count), optionally
/// with a logarithmic y axis.
pub fn lines(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let xs = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x));
        let ys = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
        let xmax = xs.fold(1.0f64, f64::max) * 1.05;
        let ymax = ys.clone().fold(f64::MIN_POSITIVE, f64::max) * 1.2;
        let ymin = ys
            .filter(|y| *y > 0.0)
            .fold(f64::MAX, f64::min)
            .min(ymax / 10.0);
        let palette = [
            RGBColor(70, 120, 190),
            RGBColor(200, 60, 60),
            RGBColor(60, 160, 90),
            RGBColor(150, 90, 180),
            RGBColor(220, 140, 40),
            RGBColor(40, 160, 170),
            RGBColor(120, 120, 120),
        ];
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .right_y_label_area_size(0);
        macro_rules! draw {
            ($chart:expr) => {{
                let Ok(mut chart) = $chart else {
                    return svg_error(title);
                };
                let _ = chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw();
                for (i, (name, pts)) in series.iter().enumerate() {
                    let color = palette[i % palette.len()];
                    let pts: Vec<(f64, f64)> = pts
                        .iter()
                        .copied()
                        .filter(|(_, y)| !log_y || *y > 0.0)
                        .collect();
                    if let Ok(s) =
                        chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    {
                        s.label(name.clone()).legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                        });
                    }
                    let _ =
                        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())));
                }
                let _ = chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .position(SeriesLabelPosition::UpperLeft)
                    .draw();
            }};
        }
        if log_y {
            draw!(b.build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale()));
        } else {
            draw!(b.build_cartesian_2d(0f64..xmax, 0f64..ymax));
        }
        let _ = root.present();
    }
    svg
}

fn svg_error(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"40\"><text x=\"8\" y=\"24\">{title}: chart could not be drawn</text></svg>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_self_contained_svg() {
        let s = bars(
            "web",
            &["default/web-0".into(), "default/web-1".into()],
            &[480, 520],
            500.0,
        );
        assert!(s.starts_with("<svg"), "{}", &s[..s.len().min(80)]);
        assert!(s.contains("<rect"));
        assert!(s.contains("web-0"));
        assert!(!s.contains("href=\"http"));
        let l = lines(
            "sync",
            "services",
            "seconds",
            &[
                ("iptables".into(), vec![(1000.0, 0.9), (10000.0, 17.0)]),
                ("nftables".into(), vec![(1000.0, 1.1)]),
            ],
            true,
        );
        assert!(l.contains("<polyline") || l.contains("<path"));
        assert!(l.contains("iptables"));
    }
}
