//! Hugging Face safetensors: one `*.safetensors` file, or a model directory with `model.safetensors` or a
//! sharded `model.safetensors.index.json`, always with `config.json`.
//!
//! A file is a u64 little-endian header length, a JSON header `{name: {dtype, shape, data_offsets: [begin, end]},
//! "__metadata__": {...}}`, then the data section; offsets are relative to the data section, which starts at
//! `8 + header_len`. Only the header is read. [`parse_header`] checks every tensor (supported dtype F32/F16/BF16,
//! shape product without overflow, `end - begin == n_elems * dtype size`, inside the file, no overlaps) and is
//! usable from a fuzzer on bytes.
//!
//! A directory converted by mlx-lm (a `quantization` entry in `config.json`) also holds U32 packed weights:
//! they enter the index as MLX affine planes (see [`super::mlx`]), checked against their scales and biases.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Component, Path};

use kernels::DType;
use serde::Deserialize;

use super::mlx::Quantization;
use super::{Metadata, ModelFile, TensorInfo, WeightIndex};
use crate::{Error, Result};

/// Largest JSON header accepted (the reference implementation's limit too).
pub const HEADER_BYTES_MAX: u64 = 100 << 20;
/// Largest `config.json` or `model.safetensors.index.json` accepted.
pub const JSON_BYTES_MAX: u64 = 100 << 20;

/// The element type for a safetensors dtype string, or `None` for one flash-moe does not read.
pub fn dtype_from_str(s: &str) -> Option<DType> {
    match s {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

/// Opens one `.safetensors` file; `config.json` must be in the same directory.
pub fn open_file(path: &Path) -> Result<WeightIndex> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let config = read_config(dir)?;
    let mut index =
        Builder { quant: Quantization::from_config(&config, &dir.join("config.json"))?, ..Default::default() };
    index.add_file(path)?;
    index.finish(path, config, dir)
}

/// Opens a model directory: `model.safetensors.index.json` (sharded) or `model.safetensors`, and `config.json`.
pub fn open_dir(dir: &Path) -> Result<WeightIndex> {
    let index_path = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    // Weights first: a directory without them is the wrong directory, whatever else it holds.
    if !index_path.is_file() && !single.is_file() {
        return Err(Error::format(
            dir,
            "no model.safetensors or model.safetensors.index.json in this directory: give a model directory, a \
             .safetensors file or a .gguf file",
        ));
    }
    let config = read_config(dir)?;
    let mut index =
        Builder { quant: Quantization::from_config(&config, &dir.join("config.json"))?, ..Default::default() };
    if index_path.is_file() {
        let weight_map = read_weight_map(&index_path)?;
        let mut shards: Vec<&str> = weight_map.values().map(String::as_str).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            let shard_path = dir.join(shard);
            if !shard_path.is_file() {
                return Err(Error::format(
                    &index_path,
                    format!("shard '{shard}' named in the weight_map is missing ({})", shard_path.display()),
                ));
            }
            index.add_file(&shard_path)?;
        }
        for (name, shard) in &weight_map {
            let found = index.by_name.get(name).map(|&i| index.files[index.tensors[i].file].path.as_path());
            if found != Some(dir.join(shard).as_path()) {
                return Err(Error::format(
                    &index_path,
                    format!("weight_map puts tensor '{name}' in '{shard}', but that shard does not hold it"),
                ));
            }
        }
    } else {
        index.add_file(&single)?;
    }
    index.finish(dir, config, dir)
}

fn read_json_file(path: &Path, what: &str) -> Result<serde_json::Value> {
    let f = ModelFile::open(path)?;
    if f.size > JSON_BYTES_MAX {
        return Err(Error::format(path, format!("{what} is {} bytes, more than {JSON_BYTES_MAX}", f.size)));
    }
    let mut bytes = Vec::with_capacity(f.size as usize);
    (&f.file).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("{what} is not valid JSON: {e}")))
}

/// `dir/config.json`, parsed.
fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Err(Error::config(
            &path,
            "config.json is missing: safetensors weights need the model's config.json beside them",
        ));
    }
    let v = read_json_file(&path, "config.json")?;
    if !v.is_object() {
        return Err(Error::config(&path, "config.json is not a JSON object"));
    }
    Ok(v)
}

/// The `weight_map` of an index file: tensor name -> shard file name (a plain file name in the directory).
fn read_weight_map(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(Deserialize)]
    struct IndexJson {
        weight_map: BTreeMap<String, String>,
    }
    let v = read_json_file(path, "the safetensors index")?;
    let index: IndexJson = serde_json::from_value(v).map_err(|e| {
        Error::format(path, format!("not a safetensors index (needs \"weight_map\": {{name: file}}): {e}"))
    })?;
    for shard in index.weight_map.values() {
        let mut parts = Path::new(shard).components();
        if !matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) {
            return Err(Error::format(path, format!("shard name '{shard}' is not a plain file name")));
        }
    }
    Ok(index.weight_map)
}

/// Tensors from several files, with names unique across them.
#[derive(Default)]
struct Builder {
    files: Vec<ModelFile>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    /// An MLX model's quantization: U32 tensors are packed planes.
    quant: Option<Quantization>,
}

impl Builder {
    fn add_file(&mut self, path: &Path) -> Result<()> {
        let f = ModelFile::open(path)?;
        let mut prefix = [0u8; 8];
        read_exact(&f, &mut prefix, path, "the header length")?;
        let header_len = header_len(prefix, f.size, path)?;
        let mut header = vec![0u8; header_len as usize];
        read_exact(&f, &mut header, path, "the JSON header")?;
        let file_index = self.files.len();
        for mut t in parse_header_with(&header, f.size, path, self.quant.as_ref())? {
            t.file = file_index;
            if let Some(first) = self.by_name.insert(t.name.clone(), self.tensors.len()) {
                let other = self.files.get(self.tensors[first].file).map_or(path, |f| f.path.as_path());
                let msg = format!("tensor '{}' is also in another shard, {}", t.name, other.display());
                return Err(Error::format(path, msg));
            }
            self.tensors.push(t);
        }
        self.files.push(f);
        Ok(())
    }

    fn finish(self, path: &Path, config: serde_json::Value, dir: &Path) -> Result<WeightIndex> {
        let index = WeightIndex {
            path: path.to_path_buf(),
            files: self.files,
            tensors: self.tensors,
            by_name: self.by_name,
            metadata: Metadata::HfConfig { config, dir: dir.to_path_buf() },
        };
        if let Some(q) = &self.quant {
            super::mlx::check_planes(&index, q)?;
        }
        Ok(index)
    }
}

fn read_exact(f: &ModelFile, buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    (&f.file).read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::format(path, format!("truncated file: it ends while reading {what}"))
        } else {
            Error::io(path, e)
        }
    })
}

/// The JSON header's length from the file's first 8 bytes, checked against the file's length and
/// [`HEADER_BYTES_MAX`].
pub fn header_len(prefix: [u8; 8], file_len: u64, path: &Path) -> Result<u64> {
    let n = u64::from_le_bytes(prefix);
    let room = file_len.saturating_sub(8);
    if n > room || n > HEADER_BYTES_MAX {
        return Err(Error::format(
            path,
            format!(
                "not a safetensors file or truncated: header length {n} exceeds the {room} bytes after the length \
                 prefix or the limit of {HEADER_BYTES_MAX}"
            ),
        ));
    }
    if n < 2 {
        return Err(Error::format(path, format!("safetensors header length {n} is too short for a JSON object")));
    }
    Ok(n)
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Parses the JSON header `header` (the bytes after the 8-byte length) of a file of `file_len` bytes.
///
/// Returns the tensors (with `file = 0`) sorted by offset, with absolute offsets (`8 + header.len() + begin`).
pub fn parse_header(header: &[u8], file_len: u64, path: &Path) -> Result<Vec<TensorInfo>> {
    parse_header_with(header, file_len, path, None)
}

/// [`parse_header`] for a file of an MLX model quantized as `quant`: U32 tensors become packed planes.
pub fn parse_header_with(
    header: &[u8],
    file_len: u64,
    path: &Path,
    quant: Option<&Quantization>,
) -> Result<Vec<TensorInfo>> {
    let entries: BTreeMap<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| Error::format(path, format!("safetensors header is not a JSON object of tensors: {e}")))?;
    let data_start = 8 + header.len() as u64;
    let data_len = file_len.checked_sub(data_start).ok_or_else(|| {
        Error::format(path, format!("truncated file: the header ends at byte {data_start}, past the end ({file_len})"))
    })?;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, v) in entries {
        if name == "__metadata__" {
            continue;
        }
        let err = |msg: String| Error::format(path, format!("tensor '{name}': {msg}"));
        let raw: RawTensor = serde_json::from_value(v)
            .map_err(|e| err(format!("needs {{\"dtype\", \"shape\", \"data_offsets\": [begin, end]}}: {e}")))?;
        // `Err(q)`: an MLX packed weight, whose type and logical shape come from the quantization `q` once the
        // raw shape is known to be sound.
        let (dtype, elem_bytes) = match (dtype_from_str(&raw.dtype), quant) {
            (Some(d), _) => (Ok(d), d.block_bytes()),
            (None, Some(q)) if raw.dtype == "U32" => (Err(q), 4),
            _ => {
                return Err(Error::UnsupportedDType {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    type_id: u32::MAX,
                    type_name: raw.dtype.clone(),
                })
            }
        };
        let n_elems = raw.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let n_bytes = n_elems.and_then(|n| n.checked_mul(elem_bytes as u64));
        let (Some(n_bytes), Ok(shape)) =
            (n_bytes, raw.shape.iter().map(|&d| usize::try_from(d)).collect::<std::result::Result<Vec<_>, _>>())
        else {
            return Err(err(format!("shape {:?} overflows", raw.shape)));
        };
        if n_elems.and_then(|n| usize::try_from(n).ok()).is_none() {
            return Err(err(format!("shape {:?} overflows usize", raw.shape)));
        }
        let [begin, end] = raw.data_offsets;
        if begin > end || end > data_len {
            return Err(err(format!(
                "data_offsets [{begin}, {end}] are outside the data section of {data_len} bytes (truncated or corrupt \
                 file)"
            )));
        }
        if end - begin != n_bytes {
            return Err(err(format!(
                "data_offsets [{begin}, {end}] span {} bytes, but {} {:?} needs {n_bytes}",
                end - begin,
                raw.dtype,
                raw.shape
            )));
        }
        let (dtype, shape) = match dtype {
            Ok(d) => (d, shape),
            Err(q) => q.packed(&name, &shape, path)?,
        };
        tensors.push(TensorInfo { name, dtype, shape, file: 0, offset: data_start + begin, len: n_bytes });
    }
    tensors.sort_by_key(|t| (t.offset, t.len));
    for w in tensors.windows(2) {
        if w[1].offset < w[0].offset + w[0].len {
            return Err(Error::format(path, format!("tensors '{}' and '{}' overlap", w[0].name, w[1].name)));
        }
    }
    Ok(tensors)
}
