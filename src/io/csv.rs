//! Numeric CSV matrices through the `csv` crate: comma separated, an optional header
//! row, RFC 4180 quoting, LF, CR or CRLF line ends.

use std::io;
use std::path::Path;

/// Writes `data` (row-major, `cols` values per row) as CSV, atomically. Values use
/// f32's `Display`, which prints the shortest string that parses back to the same
/// f32, so a write/parse round trip is exact (NaN and ±inf print as `NaN`, `inf`).
/// Header names are quoted where CSV needs it.
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
    let rows = data
        .chunks_exact(cols)
        .map(|r| r.iter().map(f32::to_string));
    write_records(path, header, rows)
}

/// Writes a header (if any) and records as CSV, atomically.
pub fn write_records<R, S>(
    path: &Path,
    header: Option<&[&str]>,
    records: impl Iterator<Item = R>,
) -> io::Result<()>
where
    R: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    crate::io::atomic::write_atomic_with(path, |w| {
        let mut out = csv::WriterBuilder::new().flexible(false).from_writer(w);
        if let Some(h) = header {
            out.write_record(h)?;
        }
        for r in records {
            out.write_record(r)?;
        }
        out.flush()
    })
}

/// Parses numeric CSV text into row-major values and the column count.
///
/// Blank lines are ignored; a UTF-8 BOM is skipped; cells are trimmed and may be
/// quoted. The first row is taken as a header if any of its cells is not a number.
/// `nan` and `inf` cells parse (the caller decides whether they are acceptable). Errors
/// are one line and name the row (the 1-based line number in the text, so it matches
/// an editor) and column.
pub fn parse_csv(text: &str) -> Result<(Vec<f32>, usize), String> {
    parse_cells(text)
}

/// As [`parse_csv`], each value parsed as f64 (the data loader's statistics use them).
pub fn parse_csv_f64(text: &str) -> Result<(Vec<f64>, usize), String> {
    parse_cells(text)
}

fn parse_cells<T: std::str::FromStr>(text: &str) -> Result<(Vec<T>, usize), String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = reader.records().filter(|r| match r {
        // A line of blanks is one empty field once trimmed.
        Ok(r) => !(r.len() == 1 && r[0].is_empty()),
        Err(_) => true,
    });
    let line = |r: &csv::StringRecord| r.position().map_or(0, |p| line_of(text, p.byte()));
    let first = records
        .next()
        .ok_or("empty CSV file: no rows")?
        .map_err(|e| csv_error(text, e))?;
    let (first_no, cols) = (line(&first), first.len());
    let header = first.iter().any(|c| c.parse::<T>().is_err());
    let mut data = Vec::new();
    if !header {
        data.extend(first.iter().filter_map(|c| c.parse::<T>().ok()));
    }
    for r in records {
        let r = r.map_err(|e| csv_error(text, e))?;
        let no = line(&r);
        if r.len() != cols {
            return Err(format!(
                "CSV row {no} has {} columns, expected {cols} (as in row {first_no})",
                r.len()
            ));
        }
        for (j, cell) in r.iter().enumerate() {
            let v = cell.parse::<T>().map_err(|_| {
                if cell.is_empty() {
                    format!("CSV row {no}, column {}: empty cell", j + 1)
                } else {
                    format!(
                        "CSV row {no}, column {}: '{}' is not a number",
                        j + 1,
                        short(cell)
                    )
                }
            })?;
            data.push(v);
        }
    }
    if data.is_empty() {
        let names: Vec<&str> = first.iter().collect();
        return Err(format!(
            "CSV has a header (row {first_no}: '{}') but no data rows",
            short(&names.join(","))
        ));
    }
    Ok((data, cols))
}

/// A cell as an error quotes it: at most 40 characters, on one line.
fn short(cell: &str) -> String {
    let one_line: String = cell
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// The 1-based line of byte `at` of `text`, counting LF, CRLF and lone CR line ends
/// (csv's own line count skips blank lines, and a record's position is where the blank
/// lines before it start).
fn line_of(text: &str, at: u64) -> u64 {
    let at = (at as usize).min(text.len());
    let blank = text.as_bytes()[at..]
        .iter()
        .take_while(|&&c| c == b'\r' || c == b'\n')
        .count();
    let b = &text.as_bytes()[..at + blank];
    let lone_cr = b
        .windows(2)
        .filter(|w| w[0] == b'\r' && w[1] != b'\n')
        .count()
        + (b.last() == Some(&b'\r')) as usize;
    1 + (b.iter().filter(|&&c| c == b'\n').count() + lone_cr) as u64
}

fn csv_error(text: &str, e: csv::Error) -> String {
    match e.position() {
        Some(p) => format!("CSV row {}: {}", line_of(text, p.byte()), e.kind_text()),
        None => format!("CSV: {e}"),
    }
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for csv::Error {
    /// The error without csv's own position prefix.
    fn kind_text(&self) -> String {
        match self.kind() {
            csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 text ({err})"),
            _ => self
                .to_string()
                .lines()
                .next()
                .unwrap_or("malformed")
                .to_string(),
        }
    }
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
        write_csv(&p, &data[..2], 2, Some(&["a,b", "say \"hi\""])).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("\"a,b\",\"say \"\"hi\"\"\"\n"), "{text}");
        assert_eq!(parse_csv(&text).unwrap(), (data[..2].to_vec(), 2));
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
        let (d, c) = parse_csv("x\r5\r-6\r").unwrap();
        assert_eq!((d, c), (vec![5.0, -6.0], 1));
        let (d, _) = parse_csv("nan,inf,-inf").unwrap();
        assert!(d[0].is_nan() && d[1] == f32::INFINITY && d[2] == f32::NEG_INFINITY);
    }

    #[test]
    fn errors_are_clear() {
        let long_cell = format!("x,y\n1,{}\n", "z".repeat(5000));
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
            (
                "x,y\n1,\"2\n3\"\n",
                "row 2, column 2: '2 3' is not a number",
            ),
            (&long_cell, "is not a number"),
        ];
        for (text, want) in cases {
            let err = parse_csv(text).expect_err(text);
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should mention {want:?}"
            );
            assert!(!err.contains('\n'), "one-line message: {err:?}");
            assert!(err.len() < 200, "a short message: {err:?}");
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
