//! A streaming GGUF v3 writer, byte-compatible with llama.cpp's `gguf_write_to_file` and gguf-py's `GGUFWriter`.
//!
//! [`GgufWriter`] takes the metadata and every tensor's name, type and shape first, then writes the header and
//! takes tensor data in order, in chunks of any size, padding each tensor to the alignment. It holds only the
//! header in memory, so it can write the synthetic tens-of-GB models and the small (and deliberately broken)
//! files of the tests. The value encoders ([`write_string`], [`write_value`], [`write_array`]) are public so
//! that tests can craft headers by hand.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use kernels::DType;

use super::gguf::{GgufArray, GgufValue, GGUF_DEFAULT_ALIGNMENT, GGUF_DIMS_MAX, GGUF_MAGIC};
use crate::{Error, Result};

/// Writes one GGUF v3 file: `add_kv`/`add_tensor`, then `write_tensor_data` for each tensor in order, then
/// `finish`.
pub struct GgufWriter<W: Write> {
    w: W,
    /// Where the bytes go, for error messages.
    path: PathBuf,
    alignment: u64,
    kvs: Vec<(String, GgufValue)>,
    keys: HashSet<String>,
    tensors: Vec<PlannedTensor>,
    names: HashSet<String>,
    /// Bytes of the data section planned so far (each tensor padded).
    data_bytes: u64,
    /// Bytes written so far.
    pos: u64,
    header_written: bool,
    /// The tensor whose data comes next, and how many of its bytes have been written.
    cur: usize,
    cur_written: u64,
}

struct PlannedTensor {
    name: String,
    /// ggml order: contiguous dimension first.
    ne: Vec<u64>,
    dtype: DType,
    len: u64,
    rel_offset: u64,
}

impl GgufWriter<BufWriter<File>> {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(GgufWriter::new(BufWriter::with_capacity(1 << 20, f), path))
    }
}

impl<W: Write> GgufWriter<W> {
    /// A writer into `w`; `path` names the destination in errors.
    pub fn new(w: W, path: impl Into<PathBuf>) -> Self {
        GgufWriter {
            w,
            path: path.into(),
            alignment: GGUF_DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            data_bytes: 0,
            pos: 0,
            header_written: false,
            cur: 0,
            cur_written: 0,
        }
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(&self.path, msg)
    }

    fn planning(&self, what: &str) -> Result<()> {
        if self.header_written {
            return Err(self.err(format!("GgufWriter: {what} after the header was written")));
        }
        Ok(())
    }

    /// Adds a metadata key. `general.alignment` (a `U32` power of two) also sets the alignment; it must come
    /// before the first tensor.
    pub fn add_kv(&mut self, key: impl Into<String>, value: GgufValue) -> Result<()> {
        let key = key.into();
        self.planning(&format!("adding key '{key}'"))?;
        if key == "general.alignment" {
            match value {
                GgufValue::U32(a) if a.is_power_of_two() && self.tensors.is_empty() => self.alignment = a.into(),
                _ => {
                    return Err(self.err(format!(
                        "general.alignment must be a U32 power of two set before any tensor, got {value}"
                    )))
                }
            }
        }
        if !self.keys.insert(key.clone()) {
            return Err(self.err(format!("GgufWriter: duplicate key '{key}'")));
        }
        self.kvs.push((key, value));
        Ok(())
    }

    /// Adds a tensor of `dtype` and row-major `shape` (outermost first); its data comes later, in the order
    /// tensors were added.
    pub fn add_tensor(&mut self, name: impl Into<String>, dtype: DType, shape: &[usize]) -> Result<()> {
        let name = name.into();
        self.planning(&format!("adding tensor '{name}'"))?;
        if shape.len() > GGUF_DIMS_MAX {
            return Err(self.err(format!("tensor '{name}': {} dimensions, more than {GGUF_DIMS_MAX}", shape.len())));
        }
        let ne0 = shape.last().copied().unwrap_or(1);
        let row_bytes = dtype.row_bytes(ne0).ok_or_else(|| {
            self.err(format!("tensor '{name}': row length {ne0} is not a multiple of {}'s block size", dtype.name()))
        })?;
        let n_rows = shape.iter().rev().skip(1).try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let len = n_rows.and_then(|r| r.checked_mul(row_bytes as u64));
        let padded = len.and_then(|l| l.checked_next_multiple_of(self.alignment));
        let end = padded.and_then(|p| self.data_bytes.checked_add(p));
        let (Some(len), Some(end)) = (len, end) else {
            return Err(self.err(format!("tensor '{name}': shape {shape:?} overflows")));
        };
        if !self.names.insert(name.clone()) {
            return Err(self.err(format!("GgufWriter: duplicate tensor name '{name}'")));
        }
        let ne = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push(PlannedTensor { name, ne, dtype, len, rel_offset: self.data_bytes });
        self.data_bytes = end;
        Ok(())
    }

    /// Byte length of tensor `name`'s data (without padding), once added.
    pub fn tensor_len(&self, name: &str) -> Option<u64> {
        self.tensors.iter().find(|t| t.name == name).map(|t| t.len)
    }

    /// The tensor whose data [`write_tensor_data`](Self::write_tensor_data) takes next, and how many of its
    /// bytes are still to come; `None` once all data is written.
    pub fn next_tensor(&self) -> Option<(&str, u64)> {
        let mut i = self.cur;
        while self.cur_written == 0 && self.tensors.get(i).is_some_and(|t| t.len == 0) {
            i += 1;
        }
        let written = if i == self.cur { self.cur_written } else { 0 };
        self.tensors.get(i).map(|t| (t.name.as_str(), t.len - written))
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes).map_err(|e| Error::io(&self.path, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (self.pos.next_multiple_of(self.alignment) - self.pos) as usize;
        self.put(&vec![0u8; n])
    }

    /// Writes the header (magic, counts, metadata, tensor infos, padding). Called by the first
    /// [`write_tensor_data`](Self::write_tensor_data) or by [`finish`](Self::finish) if not before.
    /// Returns the header's length, where the data section starts.
    pub fn write_header(&mut self) -> Result<u64> {
        self.planning("writing the header")?;
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            write_kv(&mut h, k, v).map_err(|e| Error::io(&self.path, e))?;
        }
        for t in &self.tensors {
            write_string(&mut h, &t.name).map_err(|e| Error::io(&self.path, e))?;
            h.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            h.extend_from_slice(&t.rel_offset.to_le_bytes());
        }
        self.put(&h)?;
        self.pad()?;
        self.header_written = true;
        Ok(self.pos)
    }

    /// Appends `bytes` to the current tensor's data (tensors in the order added). A tensor's data may come in
    /// several chunks; a chunk may not run past the end of its tensor. Pads after each complete tensor.
    pub fn write_tensor_data(&mut self, bytes: &[u8]) -> Result<()> {
        if !self.header_written {
            self.write_header()?;
        }
        // Tensors of zero bytes take no data call.
        while self.cur_written == 0 && self.tensors.get(self.cur).is_some_and(|t| t.len == 0) {
            self.cur += 1;
        }
        let Some(t) = self.tensors.get(self.cur) else {
            return Err(self.err("GgufWriter: tensor data past the last tensor"));
        };
        let left = t.len - self.cur_written;
        if bytes.len() as u64 > left {
            return Err(self.err(format!(
                "GgufWriter: {} bytes for tensor '{}', which has only {left} bytes left of {}",
                bytes.len(),
                t.name,
                t.len
            )));
        }
        self.put(bytes)?;
        self.cur_written += bytes.len() as u64;
        if self.cur_written == self.tensors[self.cur].len {
            self.pad()?;
            self.cur += 1;
            self.cur_written = 0;
        }
        Ok(())
    }

    /// Checks that every tensor's data was written, flushes, and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        if !self.header_written {
            self.write_header()?;
        }
        while self.tensors.get(self.cur).is_some_and(|t| t.len == 0) {
            self.cur += 1;
        }
        if let Some(t) = self.tensors.get(self.cur) {
            return Err(self.err(format!(
                "GgufWriter: finished with {} of {} bytes of tensor '{}' written",
                self.cur_written, t.len, t.name
            )));
        }
        self.w.flush().map_err(|e| Error::io(&self.path, e))?;
        Ok(self.w)
    }
}

/// A GGUF string: u64 length, bytes.
pub fn write_string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// A key/value pair: key, u32 value type, value.
pub fn write_kv<W: Write>(w: &mut W, key: &str, v: &GgufValue) -> io::Result<()> {
    write_string(w, key)?;
    w.write_all(&v.type_().id().to_le_bytes())?;
    write_value(w, v)
}

/// A value without its type id.
pub fn write_value<W: Write>(w: &mut W, v: &GgufValue) -> io::Result<()> {
    match v {
        GgufValue::U8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::Bool(x) => w.write_all(&[u8::from(*x)]),
        GgufValue::String(s) => write_string(w, s),
        GgufValue::Array(a) => write_array(w, a),
    }
}

/// An array: u32 element type, u64 count, elements (nested arrays each with their own type and count).
pub fn write_array<W: Write>(w: &mut W, a: &GgufArray) -> io::Result<()> {
    w.write_all(&a.elem_type().id().to_le_bytes())?;
    w.write_all(&(a.len() as u64).to_le_bytes())?;
    macro_rules! each {
        ($v:expr) => {{
            for x in $v {
                w.write_all(&x.to_le_bytes())?;
            }
            Ok(())
        }};
    }
    match a {
        GgufArray::U8(v) => w.write_all(v),
        GgufArray::I8(v) => each!(v),
        GgufArray::U16(v) => each!(v),
        GgufArray::I16(v) => each!(v),
        GgufArray::U32(v) => each!(v),
        GgufArray::I32(v) => each!(v),
        GgufArray::U64(v) => each!(v),
        GgufArray::I64(v) => each!(v),
        GgufArray::F32(v) => each!(v),
        GgufArray::F64(v) => each!(v),
        GgufArray::Bool(v) => each!(v.iter().map(|&b| u8::from(b))),
        GgufArray::String(v) => v.iter().try_for_each(|s| write_string(w, s)),
        GgufArray::Array(v) => v.iter().try_for_each(|a| write_array(w, a)),
    }
}
