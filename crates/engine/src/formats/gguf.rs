//! GGUF v2 and v3 (little-endian), as llama.cpp's `ggml/src/gguf.cpp` reads and writes it.
//!
//! Layout: `"GGUF"`, u32 version, u64 n_tensors, u64 n_kv, the key/values (u64-length string key, u32 type,
//! value), the tensor infos (name, u32 n_dims, `i64 ne[n_dims]` contiguous dimension first, u32 ggml type, u64
//! offset relative to the data section), padding to `general.alignment` (default 32), then the tensor data.
//!
//! [`parse`] reads the header from any `Read` (a `BufReader<File>` or a byte slice, for fuzzing) and returns
//! [`GgufMetadata`] and one [`TensorInfo`] per tensor with shapes reversed to row-major and absolute offsets.
//! It never reads tensor data, and it bounds every count and length by the bytes left in the file before
//! allocating, so a corrupt header fails fast with an error naming the file instead of allocating or hanging.

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::Path;

use kernels::DType;

pub use super::gguf_metadata::{GgufArray, GgufMetadata, GgufType, GgufValue};
use super::{Metadata, ModelFile, TensorInfo, WeightIndex};
use crate::{Error, Result};

/// `"GGUF"` as the first four bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const GGUF_DIMS_MAX: usize = 4;
/// Longest string accepted (keys, values, tensor names). The longest real ones are chat templates (~100 KB).
pub const GGUF_STRING_BYTES_MAX: u64 = 64 << 20;
/// Largest header accepted: counts and lengths are bounded by the smaller of this and the file's length. Real
/// headers are tens of MB at most (token lists and merges).
pub const GGUF_HEADER_BYTES_MAX: u64 = 1 << 30;
/// Deepest nesting of arrays in arrays (llama.cpp writes none; gguf-py can write them).
pub const GGUF_ARRAY_DEPTH_MAX: usize = 8;
/// Capacity reserved up front for a list read from a file; beyond it lists grow as elements actually arrive.
const RESERVE_ELEMS_MAX: usize = 1 << 16;

/// Opens a GGUF file and indexes its tensors (file index 0). Reads the header only.
pub fn open(path: &Path) -> Result<WeightIndex> {
    let model_file = ModelFile::open(path)?;
    let reader = BufReader::with_capacity(1 << 20, &model_file.file);
    let (metadata, tensors) = parse(reader, model_file.size, path)?;
    let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    Ok(WeightIndex {
        path: path.to_path_buf(),
        files: vec![model_file],
        tensors,
        by_name,
        metadata: Metadata::Gguf(metadata),
    })
}

/// Parses a GGUF header from `r`, the start of a file of `file_len` bytes named `path` (used in errors).
///
/// Returns the metadata and the tensors (with `file = 0`) in file order. Checks that every tensor lies inside
/// `file_len`, is aligned, has a supported type and a row length that is a whole number of blocks.
pub fn parse<R: Read>(r: R, file_len: u64, path: &Path) -> Result<(GgufMetadata, Vec<TensorInfo>)> {
    let mut h = Header { r, pos: 0, file_len, path };
    let mut magic = [0u8; 4];
    h.bytes(&mut magic, "the magic")?;
    if magic != GGUF_MAGIC {
        return Err(h.err(format!("not a GGUF file: magic {:?}, expected \"GGUF\"", String::from_utf8_lossy(&magic))));
    }
    let version = h.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(
                h.err("GGUF version 1 is not supported (only 2 and 3): re-convert the model with a current llama.cpp")
            )
        }
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(h.err(format!(
                "big-endian GGUF (version {} byte-swapped) is not supported: convert it with gguf-convert-endian",
                v.swap_bytes()
            )))
        }
        v => return Err(h.err(format!("unsupported GGUF version {v} (only 2 and 3 are supported)"))),
    }
    let n_tensors = h.u64("the tensor count")?;
    let n_kv = h.u64("the key/value count")?;
    // Every key/value takes at least 8 (key length) + 4 (type) + 1 bytes; every tensor info 8 + 4 + 4 + 8.
    h.check_count(n_kv, 13, "key/value pairs")?;
    h.check_count(n_tensors, 24, "tensors")?;

    let mut md = GgufMetadata::new(path, version);
    for i in 0..n_kv {
        let key = h.string(|| format!("the key of key/value pair {i}"))?;
        let type_id = h.u32("a value type")?;
        let value = h.value(type_id, &key, 0)?;
        if !md.insert(key.clone(), value) {
            return Err(h.err(format!("duplicate metadata key '{key}'")));
        }
    }
    md.alignment = alignment(&md, &h)?;

    let mut raw = Vec::with_capacity((n_tensors as usize).min(RESERVE_ELEMS_MAX));
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let t = h.tensor_info(i)?;
        if !names.insert(t.name.clone()) {
            return Err(h.err(format!("duplicate tensor name '{}'", t.name)));
        }
        raw.push(t);
    }
    let data_offset = h.pos.checked_next_multiple_of(md.alignment).ok_or_else(|| h.err("header size overflows"))?;
    md.data_offset = data_offset;
    let tensors = raw.into_iter().map(|t| t.place(&md, file_len, path)).collect::<Result<Vec<_>>>()?;
    check_no_overlap(&tensors, path)?;
    Ok((md, tensors))
}

/// Fails if two tensors share bytes (llama.cpp is stricter still: it wants them packed in order).
fn check_no_overlap(tensors: &[TensorInfo], path: &Path) -> Result<()> {
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_unstable_by_key(|t| (t.offset, t.len));
    for w in by_offset.windows(2) {
        if w[1].offset < w[0].offset + w[0].len {
            let msg = format!("tensors '{}' and '{}' overlap in the file", w[0].name, w[1].name);
            return Err(Error::format(path, msg));
        }
    }
    Ok(())
}

/// `general.alignment`: any integer type that fits u32, a power of two.
fn alignment<R: Read>(md: &GgufMetadata, h: &Header<R>) -> Result<u64> {
    let Some(v) = md.get("general.alignment") else {
        return Ok(GGUF_DEFAULT_ALIGNMENT);
    };
    match v.as_int().and_then(|a| u32::try_from(a).ok()) {
        Some(a) if a.is_power_of_two() => Ok(a.into()),
        _ => Err(h.err(format!("general.alignment is {v} ({}); it must be a power of two", v.type_name()))),
    }
}

/// A tensor info as read, before it is placed in the file.
struct RawTensor {
    name: String,
    /// ggml order: contiguous dimension first.
    ne: Vec<u64>,
    dtype: DType,
    rel_offset: u64,
}

impl RawTensor {
    /// Row-major shape, byte length and absolute offset, with every check that needs the alignment.
    fn place(self, md: &GgufMetadata, file_len: u64, path: &Path) -> Result<TensorInfo> {
        let err = |msg: String| Error::format(path, format!("tensor '{}': {msg}", self.name));
        let ne0 = self.ne.first().copied().unwrap_or(1);
        let ne0_usize = usize::try_from(ne0).map_err(|_| err(format!("row length {ne0} is too large")))?;
        let row_bytes = self.dtype.row_bytes(ne0_usize).ok_or_else(|| {
            err(format!(
                "row length {ne0} is not a multiple of {}'s block size {}",
                self.dtype.name(),
                self.dtype.block_elems()
            ))
        })?;
        let mut n_elems = ne0;
        let mut n_rows = 1u64;
        for &d in self.ne.iter().skip(1) {
            n_rows = n_rows.checked_mul(d).ok_or_else(|| err(format!("shape {:?} overflows", self.ne)))?;
            n_elems = n_elems.checked_mul(d).ok_or_else(|| err(format!("shape {:?} overflows", self.ne)))?;
        }
        let shape = self.ne.iter().rev().map(|&d| usize::try_from(d)).collect::<std::result::Result<Vec<_>, _>>();
        let shape = shape.map_err(|_| err(format!("shape {:?} does not fit this machine's usize", self.ne)))?;
        usize::try_from(n_elems).map_err(|_| err(format!("shape {:?} overflows usize", self.ne)))?;
        let len =
            (row_bytes as u64).checked_mul(n_rows).ok_or_else(|| err(format!("shape {:?} overflows", self.ne)))?;
        if self.rel_offset & (md.alignment - 1) != 0 {
            // (the alignment is a power of two)
            return Err(err(format!(
                "data offset {} is not a multiple of the alignment {}",
                self.rel_offset, md.alignment
            )));
        }
        let offset = md.data_offset.checked_add(self.rel_offset);
        let end = offset.and_then(|o| o.checked_add(len));
        match (offset, end) {
            (Some(offset), Some(end)) if end <= file_len => {
                Ok(TensorInfo { name: self.name, dtype: self.dtype, shape, file: 0, offset, len })
            }
            _ => Err(err(format!(
                "truncated file: its {len} bytes of data at offset {} + {} end past the end of the file ({file_len} \
                 bytes); the file is incomplete: download or convert it again",
                md.data_offset, self.rel_offset
            ))),
        }
    }
}

/// The header reader: position, the file's length to bound counts by, the path for errors.
struct Header<'p, R> {
    r: R,
    pos: u64,
    file_len: u64,
    path: &'p Path,
}

impl<R: Read> Header<'_, R> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, msg)
    }

    /// Bytes the rest of the header may take: what is left of the file and of [`GGUF_HEADER_BYTES_MAX`].
    fn remaining(&self) -> u64 {
        self.file_len.min(GGUF_HEADER_BYTES_MAX).saturating_sub(self.pos)
    }

    fn bytes(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(self.err(format!(
                "truncated file: the header ends at byte {} while reading {what} ({} bytes)",
                self.pos,
                buf.len()
            ))),
            Err(e) => Err(Error::io(self.path, e)),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.bytes(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.bytes(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Fails unless `n` items of at least `min_bytes` each fit in the rest of the file.
    fn check_count(&self, n: u64, min_bytes: u64, what: &str) -> Result<()> {
        if n.checked_mul(min_bytes).is_none_or(|b| b > self.remaining()) {
            return Err(self.err(format!(
                "truncated file or corrupt header: {n} {what} at byte {} cannot fit in the {} bytes left in the \
                 file of {} bytes (or the header limit of {GGUF_HEADER_BYTES_MAX})",
                self.pos,
                self.remaining(),
                self.file_len
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String> {
        let len = self.u64("a string length")?;
        if len > self.remaining() || len > GGUF_STRING_BYTES_MAX {
            return Err(self.err(format!(
                "truncated file or corrupt header: {} at byte {} has length {len}, more than the {} bytes left in \
                 the file of {} bytes (or the header limit) or the string limit of {GGUF_STRING_BYTES_MAX}",
                what(),
                self.pos,
                self.remaining(),
                self.file_len
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.bytes(&mut buf, &what())?;
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let t = GgufType::from_id(type_id)
            .ok_or_else(|| self.err(format!("metadata key '{key}' has unknown value type {type_id}")))?;
        let what = || format!("the value of '{key}'");
        Ok(match t {
            GgufType::U8 => GgufValue::U8(self.scalar::<1>(key)?[0]),
            GgufType::I8 => GgufValue::I8(i8::from_le_bytes(self.scalar(key)?)),
            GgufType::U16 => GgufValue::U16(u16::from_le_bytes(self.scalar(key)?)),
            GgufType::I16 => GgufValue::I16(i16::from_le_bytes(self.scalar(key)?)),
            GgufType::U32 => GgufValue::U32(u32::from_le_bytes(self.scalar(key)?)),
            GgufType::I32 => GgufValue::I32(i32::from_le_bytes(self.scalar(key)?)),
            GgufType::U64 => GgufValue::U64(u64::from_le_bytes(self.scalar(key)?)),
            GgufType::I64 => GgufValue::I64(i64::from_le_bytes(self.scalar(key)?)),
            GgufType::F32 => GgufValue::F32(f32::from_le_bytes(self.scalar(key)?)),
            GgufType::F64 => GgufValue::F64(f64::from_le_bytes(self.scalar(key)?)),
            GgufType::Bool => GgufValue::Bool(self.bool(key)?),
            GgufType::String => GgufValue::String(self.string(what)?),
            GgufType::Array => GgufValue::Array(self.array(key, depth)?),
        })
    }

    fn scalar<const N: usize>(&mut self, key: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.bytes(&mut b, &format!("the value of '{key}'"))?;
        Ok(b)
    }

    fn bool(&mut self, key: &str) -> Result<bool> {
        match self.scalar::<1>(key)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("metadata key '{key}': bool value {b} is neither 0 nor 1"))),
        }
    }

    /// An array: u32 element type, u64 count, elements. Counts are bounded by the bytes left.
    fn array(&mut self, key: &str, depth: usize) -> Result<GgufArray> {
        if depth >= GGUF_ARRAY_DEPTH_MAX {
            return Err(self.err(format!("metadata key '{key}': arrays nested deeper than {GGUF_ARRAY_DEPTH_MAX}")));
        }
        let type_id = self.u32("an array element type")?;
        let t = GgufType::from_id(type_id)
            .ok_or_else(|| self.err(format!("metadata key '{key}': array of unknown value type {type_id}")))?;
        let n = self.u64("an array length")?;
        self.check_count(n, t.min_bytes(), &format!("elements of array '{key}'"))?;
        let n = n as usize; // fits: bounded by the file length above
        fn list<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<T>> {
            let mut v = Vec::with_capacity(n.min(RESERVE_ELEMS_MAX));
            for _ in 0..n {
                v.push(f()?);
            }
            Ok(v)
        }
        Ok(match t {
            GgufType::U8 => GgufArray::U8(list(n, || Ok(self.scalar::<1>(key)?[0]))?),
            GgufType::I8 => GgufArray::I8(list(n, || Ok(i8::from_le_bytes(self.scalar(key)?)))?),
            GgufType::U16 => GgufArray::U16(list(n, || Ok(u16::from_le_bytes(self.scalar(key)?)))?),
            GgufType::I16 => GgufArray::I16(list(n, || Ok(i16::from_le_bytes(self.scalar(key)?)))?),
            GgufType::U32 => GgufArray::U32(list(n, || Ok(u32::from_le_bytes(self.scalar(key)?)))?),
            GgufType::I32 => GgufArray::I32(list(n, || Ok(i32::from_le_bytes(self.scalar(key)?)))?),
            GgufType::U64 => GgufArray::U64(list(n, || Ok(u64::from_le_bytes(self.scalar(key)?)))?),
            GgufType::I64 => GgufArray::I64(list(n, || Ok(i64::from_le_bytes(self.scalar(key)?)))?),
            GgufType::F32 => GgufArray::F32(list(n, || Ok(f32::from_le_bytes(self.scalar(key)?)))?),
            GgufType::F64 => GgufArray::F64(list(n, || Ok(f64::from_le_bytes(self.scalar(key)?)))?),
            GgufType::Bool => GgufArray::Bool(list(n, || self.bool(key))?),
            GgufType::String => GgufArray::String(list(n, || self.string(|| format!("an element of array '{key}'")))?),
            GgufType::Array => GgufArray::Array(list(n, || self.array(key, depth + 1))?),
        })
    }

    fn tensor_info(&mut self, i: u64) -> Result<RawTensor> {
        let name = self.string(|| format!("the name of tensor {i}"))?;
        let n_dims = self.u32("a tensor's dimension count")?;
        if n_dims as usize > GGUF_DIMS_MAX {
            return Err(self.err(format!("tensor '{name}' has {n_dims} dimensions, more than {GGUF_DIMS_MAX}")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = self.u64("a tensor dimension")? as i64;
            if d < 0 {
                return Err(self.err(format!("tensor '{name}' has a negative dimension {d}")));
            }
            ne.push(d as u64);
        }
        let type_id = self.u32("a tensor type")?;
        let dtype = DType::from_ggml(type_id).ok_or_else(|| Error::UnsupportedDType {
            path: self.path.to_path_buf(),
            tensor: name.clone(),
            type_id,
            type_name: DType::ggml_name(type_id).to_string(),
        })?;
        let rel_offset = self.u64("a tensor offset")?;
        Ok(RawTensor { name, ne, dtype, rel_offset })
    }
}
