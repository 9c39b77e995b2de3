//! A GGUF (v2/v3) reader: metadata, tensor directory, and dequantisation of F32, F16, Q4_1 and
//! Q8_0 tensors to row-major f32 `tch` tensors.
//!
//! Written by hand rather than taken from a crate: the format is a header, a key/value list and a
//! tensor directory (about 150 lines to parse), and the crates that read it either bring a second
//! tensor library (candle's `quantized::gguf_file`) or do not dequantise to our types. Owning the
//! dequantisation also lets a test compare it, value for value, with the Python `gguf` package.
//!
//! Layout (llama.cpp `ggml/include/gguf.h`, `docs/gguf.md`): little-endian; magic `GGUF`, version,
//! tensor count, key/value count; the key/values; per tensor a name, dimensions (fastest-varying
//! first, so reversed for a row-major shape), a type id and an offset into the data section, which
//! starts at the next multiple of `general.alignment` (default 32).
//!
//! Blocks (`ggml-common.h`): Q4_1 is 32 weights in 20 bytes, f16 scale `d`, f16 minimum `m`, 16
//! bytes of nibbles (low nibbles are weights 0-15, high nibbles 16-31), `w = d*q + m`. Q8_0 is an
//! f16 scale and 32 `i8`, `w = d*q`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;
use tch::Tensor;

use crate::error::{MsrnnError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// The ggml tensor types, by their id in the file. Only a few are dequantised here; the rest are
/// named so that a refusal says what the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);

    pub fn name(self) -> String {
        const NAMES: [&str; 40] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
            "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16",
            "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4",
            "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
        ];
        NAMES.get(self.0 as usize).map_or_else(|| format!("unknown type id {}", self.0), |n| (*n).to_string())
    }

    /// (weights per block, bytes per block) of the types we dequantise.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 => Some((1, 2)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (the file's dimensions reversed).
    pub shape: Vec<i64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }
}

/// An open GGUF file (memory-mapped).
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    map: Mmap,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| MsrnnError::Format {
            path: self.path.to_path_buf(),
            reason: format!("truncated: wanted {n} bytes at offset {} of {}", self.pos, self.bytes.len()),
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        // A count cannot exceed the bytes left: this catches corrupt lengths before allocating.
        if n > (self.bytes.len() - self.pos) as u64 {
            return Err(self.bad(format!("{what} length {n} exceeds the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len("string")?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad(format!("a string at offset {} is not UTF-8", self.pos - n)))
    }

    fn bad(&self, reason: String) -> MsrnnError {
        MsrnnError::Format { path: self.path.to_path_buf(), reason }
    }

    fn value(&mut self, ty: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                let elem = self.u32()?;
                let n = self.len("array")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.bad(format!("unknown metadata value type {other} at offset {}", self.pos - 4))),
        })
    }
}

impl GgufFile {
    /// Opens and parses the header, metadata and tensor directory (the data stays mapped).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(MsrnnError::ModelMissing { path });
        }
        let io = |source| MsrnnError::Io { path: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; the model file is not modified while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (version, metadata, tensors, data_start) = parse(&map, &path)?;
        let g = Self { path, version, metadata, tensors, data_start, map };
        g.check_extents()?;
        Ok(g)
    }

    fn check_extents(&self) -> Result<()> {
        for t in &self.tensors {
            let bytes = self.byte_len(t);
            let end = self.data_start as u64 + t.offset + bytes.unwrap_or(0) as u64;
            if end > self.map.len() as u64 {
                return Err(self.tensor_error(&t.name, format!("ends at byte {end}, past the end of the file ({})", self.map.len())));
            }
        }
        Ok(())
    }

    fn byte_len(&self, t: &TensorInfo) -> Option<usize> {
        t.ty.block().map(|(per, bytes)| t.numel().div_ceil(per) * bytes)
    }

    fn tensor_error(&self, name: &str, reason: String) -> MsrnnError {
        MsrnnError::Tensor { path: self.path.clone(), name: name.to_string(), reason }
    }

    fn meta_error(&self, key: &str, reason: &str) -> MsrnnError {
        MsrnnError::Metadata { path: self.path.clone(), key: key.to_string(), reason: reason.to_string() }
    }

    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| self.meta_error(key, "is missing"))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)?.as_u64().ok_or_else(|| self.meta_error(key, "is not a non-negative integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)?.as_f64().ok_or_else(|| self.meta_error(key, "is not a number"))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            _ => Err(self.meta_error(key, "is not a string")),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(self.meta_error(key, "is not an array")),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.meta_error(key, "holds a non-string")),
            })
            .collect()
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| self.tensor_error(name, "is not in the file".into()))
    }

    /// The tensor's raw bytes in the file.
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        let t = self.info(name)?;
        let len = self.byte_len(t).ok_or_else(|| MsrnnError::UnsupportedType { name: name.into(), ty: t.ty.name() })?;
        let start = self.data_start + t.offset as usize;
        Ok(&self.map[start..start + len])
    }

    /// The tensor dequantised to f32, in its row-major shape.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.info(name)?;
        let values = dequantize(t.ty, self.raw(name)?, t.numel()).ok_or_else(|| MsrnnError::UnsupportedType { name: name.into(), ty: t.ty.name() })?;
        Ok(Tensor::from_slice(&values).f_reshape(t.shape.as_slice())?)
    }
}

type Parsed = (u32, BTreeMap<String, Value>, Vec<TensorInfo>, usize);

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor { bytes, pos: 0, path };
    if c.take(4)? != MAGIC {
        return Err(c.bad("the file does not start with the magic `GGUF`".into()));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(c.bad(format!("version {version}; this reader knows versions 2 and 3")));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        let value = c.value(ty)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        tensors.push(tensor_info(&mut c)?);
    }
    let alignment = match metadata.get("general.alignment") {
        Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| c.bad("general.alignment is not a power of two".into()))?,
        None => DEFAULT_ALIGNMENT,
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    Ok((version, metadata, tensors, data_start as usize))
}

fn tensor_info(c: &mut Cursor) -> Result<TensorInfo> {
    let name = c.string()?;
    let n_dims = c.u32()?;
    if n_dims == 0 || n_dims > 4 {
        return Err(c.bad(format!("tensor `{name}` has {n_dims} dimensions (1 to 4 allowed)")));
    }
    let mut shape = Vec::new();
    for _ in 0..n_dims {
        let d = c.u64()?;
        shape.push(i64::try_from(d).map_err(|_| c.bad(format!("tensor `{name}` has dimension {d}")))?);
    }
    shape.reverse();
    let ty = GgmlType(c.u32()?);
    let offset = c.u64()?;
    Ok(TensorInfo { name, shape, ty, offset })
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `n` weights of type `ty` from `raw`; `None` for a type this reader does not know.
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Option<Vec<f32>> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(|b| f16_at(b, 0))),
        GgmlType::Q4_1 => {
            for block in raw.chunks_exact(20) {
                let (d, m, qs) = (f16_at(block, 0), f16_at(block, 2), &block[4..20]);
                out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0f) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
        }
        GgmlType::Q8_0 => {
            for block in raw.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..34].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        _ => return None,
    }
    out.truncate(n);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_block(d: f32, m: f32, codes: [u8; 32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(f16::from_f32(d).to_le_bytes());
        b.extend(f16::from_f32(m).to_le_bytes());
        b.extend((0..16).map(|j| codes[j] | (codes[j + 16] << 4)));
        b
    }

    #[test]
    fn q4_1_low_nibbles_are_the_first_half_of_the_block() {
        let codes: [u8; 32] = std::array::from_fn(|i| (i % 16) as u8);
        let w = dequantize(GgmlType::Q4_1, &q4_1_block(0.5, -1.0, codes), 32).unwrap();
        let want: Vec<f32> = codes.iter().map(|&q| 0.5 * q as f32 - 1.0).collect();
        assert_eq!(w, want);
    }

    #[test]
    fn q8_0_is_scale_times_signed_code() {
        let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let w = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(w[0], -4.0);
        assert_eq!(w[31], 0.25 * 15.0);
    }

    #[test]
    fn other_types_are_refused_by_name() {
        assert!(dequantize(GgmlType(12), &[0; 144], 256).is_none());
        assert_eq!(GgmlType(12).name(), "Q4_K");
        assert_eq!(GgmlType(99).name(), "unknown type id 99");
    }

    /// A minimal file written here: one F32 and one Q8_0 tensor, one string key.
    fn tiny_file() -> Vec<u8> {
        let mut f = Vec::new();
        let s = |f: &mut Vec<u8>, x: &str| {
            f.extend((x.len() as u64).to_le_bytes());
            f.extend(x.as_bytes());
        };
        f.extend(MAGIC);
        f.extend(3u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        f.extend(1u64.to_le_bytes());
        s(&mut f, "general.architecture");
        f.extend(8u32.to_le_bytes());
        s(&mut f, "llama");
        s(&mut f, "a");
        f.extend(2u32.to_le_bytes());
        f.extend(3u64.to_le_bytes()); // ne0 = 3 (fastest)
        f.extend(2u64.to_le_bytes()); // ne1 = 2
        f.extend(0u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        s(&mut f, "b");
        f.extend(1u32.to_le_bytes());
        f.extend(32u64.to_le_bytes());
        f.extend(8u32.to_le_bytes());
        f.extend(32u64.to_le_bytes());
        while f.len() % 32 != 0 {
            f.push(0);
        }
        for i in 0..6 {
            f.extend((i as f32).to_le_bytes());
        }
        f.extend([0u8; 8]);
        f.extend(f16::from_f32(2.0).to_le_bytes());
        f.extend([1u8; 32]);
        f
    }

    #[test]
    fn reads_a_handmade_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        std::fs::write(&path, tiny_file()).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        let a = g.tensor("a").unwrap();
        assert_eq!(a.size(), [2, 3]);
        assert_eq!(a.double_value(&[1, 0]), 3.0);
        assert_eq!(g.tensor("b").unwrap().double_value(&[5]), 2.0);
        let err = g.tensor("missing").unwrap_err().to_string();
        assert!(err.contains("`missing`"), "{err}");
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let f = tiny_file();
        std::fs::write(&path, &f[..f.len() - 10]).unwrap();
        let err = GgufFile::open(&path).err().expect("a truncated file must not open").to_string();
        assert!(err.contains("past the end"), "{err}");
    }
}
