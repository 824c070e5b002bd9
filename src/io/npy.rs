//! Minimal NPY (NumPy `.npy`) support for f32 matrices.
//!
//! Writing produces exactly what `numpy.save` writes for a C-contiguous float32 array
//! (format v1.0, header padded with spaces to a multiple of 64 bytes and ended by a
//! newline). Reading accepts little-endian float32/float64, 1-D or 2-D, C or Fortran
//! order, header versions 1–3, and reports anything else as an error instead of
//! panicking: the bytes may come from any file a user points us at.

use std::io::{self, Write};
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Header alignment numpy uses so that the data starts aligned for memory mapping.
const ALIGN: usize = 64;

/// Room numpy leaves after the dict so the leading axis can grow in place
/// (`numpy.lib.format.GROWTH_AXIS_MAX_DIGITS`).
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// The complete NPY header (magic, version, length, dict, padding, newline) for a
/// little-endian f32 C-order array of `shape`, byte-identical to what `numpy.save`
/// (numpy >= 1.23) writes. Write it, then the row-major values as little-endian f32
/// bytes, to stream a file whose rows are produced incrementally.
pub fn npy_header(shape: &[usize]) -> Vec<u8> {
    // Python tuple repr: "()", "(3,)", "(3, 2)".
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_repr = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_repr}, }}");
    if let Some(d0) = dims.first() {
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(d0.len())));
    }
    // Like numpy: v1.0 (u16 length) when the header fits, else v2.0 (u32), which
    // only absurdly many dimensions would need.
    let mut version = 1u8;
    let mut prefix = 10;
    if pad_len(prefix, dict.len()) > u16::MAX as usize {
        (version, prefix) = (2, 12);
    }
    let header_len = pad_len(prefix, dict.len());
    let mut out = Vec::with_capacity(prefix + header_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(prefix + header_len - 1, b' ');
    out.push(b'\n');
    out
}

/// Length of dict + padding + newline so that `prefix + len` is a multiple of
/// [`ALIGN`]. As in numpy's `_wrap_header`, an already aligned header still gets a
/// full 64 bytes of padding.
fn pad_len(prefix: usize, dict_len: usize) -> usize {
    let hlen = dict_len + 1;
    hlen + ALIGN - (prefix + hlen) % ALIGN
}

/// Writes `data` (row-major, `shape.iter().product()` values) as a `.npy` file,
/// atomically.
pub fn write_npy_f32(path: &Path, data: &[f32], shape: &[usize]) -> io::Result<()> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(data.len()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "write_npy_f32 {}: shape {shape:?} does not match {} values",
                path.display(),
                data.len()
            ),
        ));
    }
    crate::io::atomic::write_atomic_with(path, |w| {
        w.write_all(&npy_header(shape))?;
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Parses a `.npy` file's bytes into row-major f32 values and the shape (1 or 2
/// dimensions). float64 files are converted to f32.
pub fn read_npy_f32(bytes: &[u8]) -> Result<(Vec<f32>, Vec<usize>), String> {
    let (data, shape) = read_npy_f64(bytes)?;
    Ok((data.into_iter().map(|v| v as f32).collect(), shape))
}

/// Where an NPY file's values are and how they are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyLayout {
    /// Bytes per value: 4 (float32) or 8 (float64).
    pub item: usize,
    pub fortran_order: bool,
    /// 1 or 2 dimensions.
    pub shape: Vec<usize>,
    /// Byte offset of the first value.
    pub data_start: usize,
    /// Bytes of values the shape needs.
    pub data_len: usize,
}

impl NpyLayout {
    /// (rows, columns): a 1-D array is one column.
    pub fn rows_cols(&self) -> (usize, usize) {
        (self.shape[0], self.shape.get(1).copied().unwrap_or(1))
    }

    /// The layout from the file's first bytes (`prefix`: at least up to the end of the
    /// header; the data is not needed).
    pub fn parse(prefix: &[u8]) -> Result<NpyLayout, String> {
        let header_end = Self::header_end(prefix)?;
        let start = header_end - Self::header_len_of(prefix)?;
        let header = prefix.get(start..header_end).ok_or_else(|| {
            format!(
                "truncated NPY file: header needs {} bytes, file has {}",
                header_end - start,
                prefix.len().saturating_sub(start)
            )
        })?;
        let header = std::str::from_utf8(header).map_err(|_| "NPY header is not valid text")?;
        let h = parse_header(header)?;
        let item = match h.descr.as_str() {
            "<f4" => 4,
            "<f8" => 8,
            other => {
                return Err(format!(
                    "unsupported NPY dtype '{other}' (expected '<f4' float32 or '<f8' float64)"
                ))
            }
        };
        if h.shape.is_empty() || h.shape.len() > 2 {
            return Err(format!(
                "unsupported NPY shape {:?}: expected a 1-D or 2-D array",
                h.shape
            ));
        }
        let too_large = || format!("NPY shape {:?} is too large", h.shape);
        let count = h
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(too_large)?;
        let data_len = count.checked_mul(item).ok_or_else(too_large)?;
        Ok(NpyLayout {
            item,
            fortran_order: h.fortran_order,
            shape: h.shape,
            data_start: header_end,
            data_len,
        })
    }

    /// The header dict's length field.
    fn header_len_of(prefix: &[u8]) -> Result<usize, String> {
        if prefix.len() < 8 || &prefix[..6] != MAGIC {
            return Err("not an NPY file (missing \\x93NUMPY magic)".into());
        }
        let (major, minor) = (prefix[6], prefix[7]);
        let field = match major {
            1 => prefix.get(8..10),
            2 | 3 => prefix.get(8..12),
            _ => return Err(format!("unsupported NPY version {major}.{minor}")),
        }
        .ok_or("truncated NPY file: header length missing")?;
        Ok(field
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize))
    }

    /// The byte offset where the header ends and the data starts.
    pub fn header_end(prefix: &[u8]) -> Result<usize, String> {
        let len = Self::header_len_of(prefix)?;
        let start: usize = if prefix[6] == 1 { 10 } else { 12 };
        start
            .checked_add(len)
            .ok_or_else(|| "bad NPY header length".into())
    }

    /// Refuse a file whose size is not the header plus exactly the shape's values.
    pub fn check_size(&self, file_len: usize) -> Result<(), String> {
        let body = file_len.saturating_sub(self.data_start);
        if body < self.data_len {
            return Err(format!(
                "truncated NPY file: shape {:?} needs {} data bytes, found {body}",
                self.shape, self.data_len
            ));
        }
        if body > self.data_len {
            // numpy itself ignores trailing bytes, but they almost always mean the header
            // and data disagree, so refuse rather than silently load the wrong matrix.
            return Err(format!(
                "NPY file has {} unexpected bytes after the data for shape {:?}",
                body - self.data_len,
                self.shape
            ));
        }
        Ok(())
    }

    /// Little-endian values of this layout's dtype, widened exactly to f64, appended to `out`.
    pub fn decode(&self, bytes: &[u8], out: &mut Vec<f64>) {
        if self.item == 4 {
            out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
            );
        } else {
            out.extend(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
            );
        }
    }
}

/// As [`read_npy_f32`], with the values as stored (float32 widened exactly to f64).
pub fn read_npy_f64(bytes: &[u8]) -> Result<(Vec<f64>, Vec<usize>), String> {
    let layout = NpyLayout::parse(bytes)?;
    layout.check_size(bytes.len())?;
    let body = &bytes[layout.data_start..layout.data_start + layout.data_len];
    let mut data = Vec::with_capacity(layout.data_len / layout.item);
    layout.decode(body, &mut data);
    if layout.fortran_order && layout.shape.len() == 2 {
        // Column-major (element (i, j) at j * rows + i) to row-major.
        let (rows, cols) = layout.rows_cols();
        let mut rm = vec![0.0f64; data.len()];
        for j in 0..cols {
            for i in 0..rows {
                rm[i * cols + j] = data[j * rows + i];
            }
        }
        data = rm;
    }
    Ok((data, layout.shape))
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of an NPY header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }`.
fn parse_header(text: &str) -> Result<Header, String> {
    let bad = |what: &str| format!("bad NPY header ({what}): {}", text.trim_end());
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{').map_err(|_| bad("expected '{'"))?;
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("expected a quoted key"))?;
        p.expect(b':').map_err(|_| bad("expected ':'"))?;
        match key.as_str() {
            "descr" => {
                descr = Some(
                    p.string()
                        .ok_or_else(|| bad("'descr' must be a dtype string such as '<f4'"))?,
                )
            }
            "fortran_order" => {
                fortran = Some(
                    p.boolean()
                        .ok_or_else(|| bad("'fortran_order' must be True or False"))?,
                )
            }
            "shape" => {
                shape = Some(
                    p.tuple()
                        .ok_or_else(|| bad("'shape' must be a tuple of integers"))?,
                )
            }
            other => return Err(bad(&format!("unexpected key '{other}'"))),
        }
        if !p.eat(b',') {
            p.expect(b'}').map_err(|_| bad("expected ',' or '}'"))?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(bad("trailing characters after the dict"));
    }
    Ok(Header {
        descr: descr.ok_or_else(|| bad("missing 'descr'"))?,
        fortran_order: fortran.ok_or_else(|| bad("missing 'fortran_order'"))?,
        shape: shape.ok_or_else(|| bad("missing 'shape'"))?,
    })
}

/// A byte cursor over the header; every accessor is bounds-checked.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    /// Skips whitespace and consumes `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(())
        }
    }

    /// A single- or double-quoted string without escapes (numpy never writes any).
    fn string(&mut self) -> Option<String> {
        self.skip_ws();
        let q = *self.s.get(self.i).filter(|&&c| c == b'\'' || c == b'"')?;
        let start = self.i + 1;
        let len = self.s.get(start..)?.iter().position(|&c| c == q)?;
        self.i = start + len + 1;
        String::from_utf8(self.s[start..start + len].to_vec()).ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        self.skip_ws();
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s.get(self.i..)?.starts_with(word) {
                self.i += word.len();
                return Some(value);
            }
        }
        None
    }

    /// A tuple of non-negative integers: `()`, `(3,)`, `(3, 2)`; Python 2's `3L`
    /// suffix is accepted.
    fn tuple(&mut self) -> Option<Vec<usize>> {
        if !self.eat(b'(') {
            return None;
        }
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Some(dims);
            }
            self.skip_ws();
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).ok()?;
            dims.push(digits.parse().ok()?);
            if self.s.get(self.i) == Some(&b'L') {
                self.i += 1;
            }
            if !self.eat(b',') {
                return self.eat(b')').then_some(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Builds an NPY file by hand with an arbitrary header dict and body.
    fn npy_bytes(version: u8, dict: &str, body: &[u8]) -> Vec<u8> {
        let prefix = if version == 1 { 10 } else { 12 };
        let hlen = pad_len(prefix, dict.len());
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        if version == 1 {
            out.extend_from_slice(&(hlen as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(hlen as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(prefix + hlen - 1, b' ');
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    fn f32_body(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn header_matches_numpy() {
        // Byte-for-byte what numpy (>= 1.23) writes for np.zeros((3, 2), '<f4').
        let h = npy_header(&[3, 2]);
        assert_eq!(h.len() % 64, 0);
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
        // numpy >= 1.23: dict, 21 - 1 growth spaces, padding to 128 bytes, newline.
        assert_eq!(h.len(), 128);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }";
        assert_eq!(
            text,
            format!("{dict}{}\n", " ".repeat(128 - 10 - dict.len() - 1))
        );
        let h1 = npy_header(&[5]);
        assert!(std::str::from_utf8(&h1[10..])
            .unwrap()
            .contains("'shape': (5,), }"));
        assert_eq!(h1.len() % 64, 0);
    }

    #[test]
    fn round_trip() {
        let dir = crate::io::atomic::scratch_dir("npy-roundtrip");
        let data: Vec<f32> = vec![1.0, -2.5, f32::MIN_POSITIVE, 1e30, f32::NAN, 0.1];
        for shape in [vec![6], vec![3, 2], vec![1, 6], vec![6, 1]] {
            let p = dir.join("a.npy");
            write_npy_f32(&p, &data, &shape).unwrap();
            let (back, s) = read_npy_f32(&std::fs::read(&p).unwrap()).unwrap();
            assert_eq!(s, shape);
            assert_eq!(back.len(), data.len());
            for (a, b) in back.iter().zip(&data) {
                assert_eq!(a.to_bits(), b.to_bits());
            }
        }
        // Empty arrays are valid too.
        let p = dir.join("e.npy");
        write_npy_f32(&p, &[], &[0, 2]).unwrap();
        let (back, s) = read_npy_f32(&std::fs::read(&p).unwrap()).unwrap();
        assert!(back.is_empty());
        assert_eq!(s, vec![0, 2]);
        assert!(write_npy_f32(&p, &data, &[4, 2]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_f8_fortran_and_newer_versions() {
        // float64 (2, 3) in Fortran order: row-major [[1,2,3],[4,5,6]] stored by column.
        let cols: Vec<u8> = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f = npy_bytes(
            1,
            "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }",
            &cols,
        );
        let (d, s) = read_npy_f32(&f).unwrap();
        assert_eq!(s, vec![2, 3]);
        assert_eq!(d, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

        for v in [2, 3] {
            let f = npy_bytes(
                v,
                "{\"descr\": \"<f4\", \"shape\": (2L, 1L), \"fortran_order\": False}",
                &f32_body(&[7.0, 8.0]),
            );
            let (d, s) = read_npy_f32(&f).unwrap();
            assert_eq!((d, s), (vec![7.0, 8.0], vec![2, 1]));
        }
    }

    #[test]
    fn errors_are_clear() {
        let body = f32_body(&[1.0, 2.0, 3.0, 4.0]);
        let ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PK\x03\x04 not numpy".to_vec(), "magic"),
            (vec![], "magic"),
            (npy_bytes(1, ok_dict, &body)[..9].to_vec(), "truncated"),
            (npy_bytes(1, ok_dict, &body)[..40].to_vec(), "truncated"),
            (
                {
                    let mut b = npy_bytes(1, ok_dict, &body);
                    b[6] = 9;
                    b
                },
                "version",
            ),
            (npy_bytes(1, "{'descr': '<f4', 'fortran_order'", &body), "bad NPY header"),
            (npy_bytes(1, "not a dict", &body), "bad NPY header"),
            (
                npy_bytes(1, "{'descr': '<f4', 'shape': (2, 2), }", &body),
                "missing 'fortran_order'",
            ),
            (
                npy_bytes(1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (4,)}", &body),
                "True or False",
            ),
            (
                npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}", &body),
                "unexpected key",
            ),
            (
                npy_bytes(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", &body),
                "unsupported NPY dtype '<i4'",
            ),
            (
                npy_bytes(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", &body),
                "unsupported NPY dtype '>f4'",
            ),
            (
                npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2), }", &body),
                "1-D or 2-D",
            ),
            (
                npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", &body),
                "1-D or 2-D",
            ),
            (
                npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", &body),
                "truncated NPY file",
            ),
            (
                npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", &body),
                "unexpected bytes",
            ),
            (
                npy_bytes(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }",
                    &body,
                ),
                "too large",
            ),
        ];
        for (i, (bytes, want)) in cases.iter().enumerate() {
            let err = read_npy_f32(bytes).expect_err(&format!("case {i} should fail"));
            assert!(
                err.contains(want),
                "case {i}: {err:?} should mention {want:?}"
            );
        }
    }

    #[test]
    fn never_panics_on_bad_bytes() {
        let mut valid = npy_header(&[3, 2]);
        valid.extend(f32_body(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert!(read_npy_f32(&valid).is_ok());
        for n in 0..valid.len() {
            assert!(read_npy_f32(&valid[..n]).is_err(), "prefix {n} accepted");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            // Random garbage, with and without a valid magic.
            let len = rng.random_range(0..200);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) && junk.len() >= 10 {
                junk[..8].copy_from_slice(b"\x93NUMPY\x01\x00");
            }
            let _ = read_npy_f32(&junk);
            // Single-byte mutations of a valid file exercise the header parser.
            let mut m = valid.clone();
            let at = rng.random_range(0..m.len());
            m[at] = rng.random();
            let _ = read_npy_f32(&m);
        }
    }
}
