//! Weight file formats and the weight index built from them.
//!
//! A [`WeightIndex`] says, for every tensor of a model, its element type, its shape (row-major, outermost
//! dimension first: a GGUF `ne = [n_embd, n_vocab]` becomes `[n_vocab, n_embd]`), which file holds it and at which
//! byte offset and length. Readers parse headers only; tensor bytes are read on demand with positioned reads
//! ([`WeightIndex::read_tensor`], [`WeightIndex::read_at`]), so the expert store can read single experts.
//!
//! The model's configuration comes with the index as [`Metadata`]: GGUF key/values or a Hugging Face
//! `config.json`.
//!
//! # Layout
//! - [`gguf`]: the GGUF v2/v3 reader ([`gguf::parse`], [`gguf::open`]) and its metadata types
//!   ([`gguf::GgufMetadata`], [`gguf::GgufValue`], [`gguf::GgufArray`]).
//! - [`gguf_writer`]: a streaming GGUF v3 writer for synthetic models and test files.
//! - [`safetensors`]: Hugging Face safetensors files, directories and sharded indexes.
//! - [`mlx`]: MLX directories (mlx-lm's `convert`): affine-quantized weights as three planes, the
//!   `quantization` of `config.json` with its per-layer overrides.
//!
//! Readers bound every count and length in a header by the file's size before allocating, and report a broken
//! file as an [`Error`] naming the file and the problem, never a panic.

pub mod gguf;
mod gguf_metadata;
pub mod gguf_writer;
pub mod mlx;
pub mod safetensors;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use kernels::DType;

use crate::{Error, Result};

/// One tensor's place in the model files.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The name as stored in the file (GGUF `blk.0.attn_q.weight`, HF `model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    pub dtype: DType,
    /// Row-major, outermost first.
    pub shape: Vec<usize>,
    /// Index into [`WeightIndex::files`].
    pub file: usize,
    /// Absolute byte offset of the tensor's data in its file.
    pub offset: u64,
    /// Byte length of the tensor's data.
    pub len: u64,
}

impl TensorInfo {
    pub fn n_elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open model file, with what it was when opened, so that a later change is detected.
#[derive(Debug)]
pub struct ModelFile {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
    pub mtime: Option<std::time::SystemTime>,
}

impl ModelFile {
    /// Opens `path` for positioned reads and records its size and modification time.
    pub fn open(path: &Path) -> Result<ModelFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::format(path, "not a regular file"));
        }
        Ok(ModelFile { path: path.to_path_buf(), size: meta.len(), mtime: meta.modified().ok(), file })
    }
}

/// The configuration that came with the weights.
#[derive(Debug)]
pub enum Metadata {
    Gguf(gguf::GgufMetadata),
    /// `config.json` of a Hugging Face model directory (and the directory, for `tokenizer.json`).
    HfConfig {
        config: serde_json::Value,
        dir: PathBuf,
    },
}

/// Every tensor of a model: type, shape, file, offset, length.
#[derive(Debug)]
pub struct WeightIndex {
    /// The path the user gave (a GGUF file, a safetensors file or a model directory).
    pub path: PathBuf,
    pub files: Vec<ModelFile>,
    pub tensors: Vec<TensorInfo>,
    pub by_name: HashMap<String, usize>,
    pub metadata: Metadata,
}

impl WeightIndex {
    /// Opens a GGUF file, a `.safetensors` file (with `config.json` beside it) or a directory holding
    /// `model.safetensors` or `model.safetensors.index.json` plus `config.json`.
    pub fn open(path: &Path) -> Result<WeightIndex> {
        if path.is_dir() {
            return safetensors::open_dir(path);
        }
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
            let n = f.read(&mut magic).map_err(|e| Error::io(path, e))?;
            if n < 4 {
                return Err(Error::format(path, "file too short to be a model (fewer than 4 bytes)"));
            }
        }
        if &magic == b"GGUF" {
            gguf::open(path)
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            safetensors::open_file(path)
        } else {
            Err(Error::format(
                path,
                format!(
                    "not a GGUF file (magic {:?}, expected \"GGUF\") nor a .safetensors file or model directory",
                    String::from_utf8_lossy(&magic)
                ),
            ))
        }
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor or a [`Error::MissingTensor`] naming it.
    pub fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.get(name).ok_or_else(|| Error::MissingTensor { path: self.path.clone(), tensor: name.to_string() })
    }

    /// Reads `dst.len()` bytes at `offset` of file `file`, failing on a short read.
    pub fn read_at(&self, file: usize, offset: u64, dst: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let f = &self.files[file];
        f.file.read_exact_at(dst, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::format(
                    &f.path,
                    format!("truncated: reading {} bytes at offset {offset} goes past the end", dst.len()),
                )
            } else {
                Error::io(&f.path, e)
            }
        })
    }

    /// Reads a whole tensor's bytes into `dst` (which must be exactly `t.len` long).
    pub fn read_tensor(&self, t: &TensorInfo, dst: &mut [u8]) -> Result<()> {
        assert_eq!(dst.len() as u64, t.len, "read_tensor: buffer size");
        self.read_at(t.file, t.offset, dst)
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len).sum()
    }
}
