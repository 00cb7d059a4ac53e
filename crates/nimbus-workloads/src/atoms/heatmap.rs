//! The result picture: a heat map of the potential in the z-plane of the minimum, as PNG, with
//! the minimum marked. Colours span the 2nd to 98th percentile so a few spikes next to atoms do
//! not wash out the rest.

/// The smallest picture side in pixels; small grids are scaled up with square cells.
const MIN_SIDE: u32 = 320;

/// Colour stops from low (deep blue) to high (pale yellow).
const STOPS: [[f64; 3]; 5] = [
    [13.0, 8.0, 135.0],
    [84.0, 2.0, 163.0],
    [185.0, 50.0, 137.0],
    [249.0, 142.0, 9.0],
    [252.0, 253.0, 191.0],
];

fn colour(t: f64) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let mut rgb = [0u8; 3];
    for (c, out) in rgb.iter_mut().enumerate() {
        *out = (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f).round() as u8;
    }
    rgb
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Renders `values` (`n * n`, index `y * n + x`) with the cell `mark = (x, y)` outlined.
pub fn render(values: &[f64], n: u32, mark: (u32, u32)) -> Result<Vec<u8>, String> {
    if n == 0 || values.len() != (n * n) as usize {
        return Err(format!(
            "heat map needs {n} x {n} values, got {}",
            values.len()
        ));
    }
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let (lo, hi) = if sorted.is_empty() {
        (0.0, 1.0)
    } else {
        (percentile(&sorted, 0.02), percentile(&sorted, 0.98))
    };
    let span = if hi > lo { hi - lo } else { 1.0 };
    let cell = MIN_SIDE.div_ceil(n).max(1);
    let side = n * cell;
    let mut pixels = vec![0u8; (side * side * 3) as usize];
    for py in 0..side {
        for px in 0..side {
            let (x, y) = (px / cell, py / cell);
            // Rows drawn top to bottom from the highest y, so y grows upwards as on a plot.
            let v = values[((n - 1 - y) * n + x) as usize];
            let (in_mark, edge) = marker(x, n - 1 - y, px % cell, py % cell, cell, mark);
            let rgb = if in_mark && edge {
                [255, 255, 255]
            } else {
                colour((v - lo) / span)
            };
            let at = ((py * side + px) * 3) as usize;
            pixels[at..at + 3].copy_from_slice(&rgb);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| format!("png: {e}"))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| format!("png: {e}"))?;
    writer.finish().map_err(|e| format!("png: {e}"))?;
    Ok(out)
}

/// Whether pixel (`ix`, `iy`) of cell (`x`, `y`) lies in the marked cell, and on its outline
/// (for cells too small to outline, a ring of cells around the mark is outlined instead).
fn marker(x: u32, y: u32, ix: u32, iy: u32, cell: u32, mark: (u32, u32)) -> (bool, bool) {
    if cell >= 12 {
        let inside = (x, y) == mark;
        let width = (cell / 6).max(1);
        let edge = ix < width || iy < width || ix >= cell - width || iy >= cell - width;
        (inside, edge)
    } else {
        let dx = x.abs_diff(mark.0);
        let dy = y.abs_diff(mark.1);
        let ring = dx.max(dy) == 2;
        (ring, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_png_of_at_least_the_minimum_side() {
        let n = 7;
        let values: Vec<f64> = (0..n * n).map(f64::from).collect();
        let png = render(&values, n, (3, 2)).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let reader = decoder.read_info().unwrap();
        assert!(reader.info().width >= MIN_SIDE && reader.info().width.is_multiple_of(n));
        assert!(
            render(&values, 8, (0, 0)).is_err(),
            "wrong value count is an error"
        );
    }
}
