//! Plain numeric CSV matrices: comma separated, an optional header row, no quoting
//! beyond a pair of double quotes around a cell.

use std::io::{self, Write};
use std::path::Path;

/// Writes `data` (row-major, `cols` values per row) as CSV, atomically. Values use
/// f32's `Display`, which prints the shortest string that parses back to the same
/// f32, so a write/parse round trip is exact (NaN and ±inf print as `NaN`, `inf`).
pub fn write_csv(
    path: &Path,
    data: &[f32],
    cols: usize,
    header: Option<&[&str]>,
) -> io::Result<()> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if cols == 0 || !data.len().is_multiple_of(cols) {
        return Err(invalid(format!(
            "write_csv {}: {} values do not split into rows of {cols} columns",
            path.display(),
            data.len()
        )));
    }
    if let Some(h) = header {
        if h.len() != cols {
            return Err(invalid(format!(
                "write_csv {}: header has {} names for {cols} columns",
                path.display(),
                h.len()
            )));
        }
    }
    crate::io::atomic::write_atomic_with(path, |w| {
        if let Some(h) = header {
            writeln!(w, "{}", h.join(","))?;
        }
        for row in data.chunks_exact(cols) {
            for (j, v) in row.iter().enumerate() {
                if j > 0 {
                    w.write_all(b",")?;
                }
                write!(w, "{v}")?;
            }
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Parses numeric CSV text into row-major values and the column count.
///
/// Blank lines and trailing `\r` are ignored; a UTF-8 BOM is skipped. The first row is
/// taken as a header if any of its cells is not a number. `nan` and `inf` cells parse
/// (the caller decides whether they are acceptable). Errors are one line and name the
/// row (the 1-based line number in the text, so it matches an editor) and column.
pub fn parse_csv(text: &str) -> Result<(Vec<f32>, usize), String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = text
        .split('\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix('\r').unwrap_or(line)))
        .filter(|(_, line)| !line.trim().is_empty());

    let (first_no, first) = rows.next().ok_or("empty CSV file: no rows")?;
    let first_cells: Vec<&str> = first.split(',').map(clean).collect();
    let cols = first_cells.len();
    let header = first_cells.iter().any(|c| parse_cell(c).is_none());

    let mut data = Vec::new();
    if !header {
        data.extend(first_cells.iter().filter_map(|c| parse_cell(c)));
    }
    for (no, line) in rows {
        let cells: Vec<&str> = line.split(',').map(clean).collect();
        if cells.len() != cols {
            return Err(format!(
                "CSV row {no} has {} columns, expected {cols} (as in row {first_no})",
                cells.len()
            ));
        }
        for (j, cell) in cells.iter().enumerate() {
            let v = parse_cell(cell).ok_or_else(|| {
                if cell.is_empty() {
                    format!("CSV row {no}, column {}: empty cell", j + 1)
                } else {
                    format!("CSV row {no}, column {}: '{cell}' is not a number", j + 1)
                }
            })?;
            data.push(v);
        }
    }
    if data.is_empty() {
        return Err(format!(
            "CSV has a header (row {first_no}: '{}') but no data rows",
            first.trim()
        ));
    }
    Ok((data, cols))
}

/// Trims whitespace and one pair of surrounding double quotes.
fn clean(cell: &str) -> &str {
    let c = cell.trim();
    c.strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .map_or(c, str::trim)
}

fn parse_cell(cell: &str) -> Option<f32> {
    cell.parse::<f32>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn round_trip() {
        let dir = crate::io::atomic::scratch_dir("csv-roundtrip");
        let p = dir.join("a.csv");
        let data = [
            0.1f32,
            -3.0e-38,
            1.0 / 3.0,
            f32::MAX,
            f32::NAN,
            f32::NEG_INFINITY,
        ];
        write_csv(&p, &data, 2, Some(&["x", "y"])).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("x,y\n"), "{text}");
        let (back, cols) = parse_csv(&text).unwrap();
        assert_eq!(cols, 2);
        for (a, b) in back.iter().zip(&data) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a} vs {b}");
        }
        write_csv(&p, &data, 3, None).unwrap();
        let (back, cols) = parse_csv(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!((back.len(), cols), (6, 3));
        assert!(write_csv(&p, &data, 4, None).is_err());
        assert!(write_csv(&p, &data, 0, None).is_err());
        assert!(write_csv(&p, &data, 2, Some(&["x"])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tolerant_parsing() {
        let (d, c) = parse_csv("\u{feff}\"a\", b\r\n\r\n1, 2\r\n  \n3,\"4e-1\"\r\n").unwrap();
        assert_eq!((d, c), (vec![1.0, 2.0, 3.0, 0.4], 2));
        let (d, c) = parse_csv("5\n-6\n").unwrap();
        assert_eq!((d, c), (vec![5.0, -6.0], 1));
        let (d, _) = parse_csv("nan,inf,-inf").unwrap();
        assert!(d[0].is_nan() && d[1] == f32::INFINITY && d[2] == f32::NEG_INFINITY);
    }

    #[test]
    fn errors_are_clear() {
        let cases = [
            ("", "empty"),
            ("\n \r\n", "empty"),
            ("x,y\n", "header"),
            ("x,y\n\n", "no data rows"),
            ("1,2\n3\n", "row 2 has 1 columns, expected 2"),
            ("x,y\n1,2\n\n3,4,5\n", "row 4 has 3 columns"),
            (
                "x,y\n1,2\n3,abc\n",
                "row 3, column 2: 'abc' is not a number",
            ),
            ("1,2\n,4\n", "row 2, column 1: empty cell"),
            ("x,y\nfoo,bar\n", "row 2, column 1: 'foo'"),
        ];
        for (text, want) in cases {
            let err = parse_csv(text).expect_err(text);
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should mention {want:?}"
            );
            assert!(!err.contains('\n'), "one-line message: {err:?}");
        }
    }

    #[test]
    fn never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let alphabet: Vec<char> = "0123456789.,-+eE\n\r \"xnaif\u{feff}é".chars().collect();
        for _ in 0..3000 {
            let len = rng.random_range(0..60);
            let s: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let _ = parse_csv(&s);
        }
    }
}
