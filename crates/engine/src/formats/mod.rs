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

pub mod bulk;
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

    /// Refuses a weight matrix (rows of `shape.last()` values) that no kernel can multiply: an activation-only type
    /// (Q8_1, Q8_K: they have no weight dot product), or rows that are not whole blocks of the activations' type.
    /// Every matrix of a model goes through this at load, resident or streamed, so the kernels can trust them.
    pub fn check_matmul(&self, path: &Path) -> Result<()> {
        let cols = self.shape.last().copied().unwrap_or(1);
        let msg = if self.dtype.is_activation_only() {
            format!("{} is an activation-only type: a weight matrix cannot be stored in it", self.dtype.name())
        } else if !cols.is_multiple_of(self.dtype.vec_dot_type().block_elems()) {
            format!("rows of {cols} values cannot be multiplied in this type")
        } else {
            return Ok(());
        };
        Err(Error::BadTensorType {
            path: path.to_path_buf(),
            tensor: self.name.clone(),
            dtype: self.dtype.name().into(),
            msg,
        })
    }
}

/// What a file was when it was opened: a later read compares the file's state with it, so that a file rewritten in
/// place is an error, never other weights. The size and modification time alone miss a rewrite that keeps the size
/// and sets the time back (`touch -r`, `cp -p`, rsync); the status change time is set by the kernel on every write
/// and no call sets it back, and the device and inode tell a replaced path from the file opened. (A `chmod` or a
/// new hard link also changes the status change time: a false alarm, on the safe side.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime: Option<std::time::SystemTime>,
    /// Status change time: seconds and nanoseconds since the epoch.
    pub ctime: (i64, i64),
    pub dev: u64,
    pub ino: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            size: meta.len(),
            mtime: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// What differs from `then`, in words, or `None`.
    pub fn change_since(&self, then: &FileStamp) -> Option<String> {
        if self == then {
            return None;
        }
        Some(if self.size != then.size {
            format!("size {} -> {}", then.size, self.size)
        } else if (self.dev, self.ino) != (then.dev, then.ino) {
            "another file at this path".to_string()
        } else if self.mtime != then.mtime {
            "modified".to_string()
        } else {
            "rewritten or its attributes changed (status change time)".to_string()
        })
    }
}

/// An open model file, with what it was when opened, so that a later change is detected.
#[derive(Debug)]
pub struct ModelFile {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
    pub mtime: Option<std::time::SystemTime>,
    pub stamp: FileStamp,
}

impl ModelFile {
    /// Opens `path` for positioned reads and records what it is ([`FileStamp`]). Refuses anything but a regular
    /// file, without blocking on a FIFO (see [`open_regular`]).
    pub fn open(path: &Path) -> Result<ModelFile> {
        let (file, meta) = open_regular(path)?;
        let stamp = FileStamp::of(&meta);
        Ok(ModelFile { path: path.to_path_buf(), size: stamp.size, mtime: stamp.mtime, stamp, file })
    }
}

/// Opens `path` for reading if it is a regular file. Opened non-blocking and checked with `fstat` before any read,
/// so that a FIFO (or a device) given as a model file is an error at once instead of waiting forever for a writer;
/// a regular file ignores the flag, which is cleared anyway.
pub fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let kind = if t.is_fifo() {
            "a FIFO"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(Error::format(path, format!("not a regular file ({kind})")));
    }
    // SAFETY: fcntl on a descriptor we own, with flags read from it; it only changes the file status flags.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok((file, meta))
}

/// The whole of a regular file of at most `bytes_max` bytes (opened as [`open_regular`] does): for the JSON and
/// template files that come with a model.
pub fn read_regular(path: &Path, bytes_max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let (file, meta) = open_regular(path)?;
    if meta.len() > bytes_max {
        return Err(Error::format(path, format!("{} bytes, more than the {bytes_max} allowed", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(bytes_max + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > bytes_max {
        return Err(Error::format(path, format!("more than the {bytes_max} bytes allowed (growing while read?)")));
    }
    Ok(bytes)
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
            let (mut f, _) = open_regular(path)?;
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

    /// [`WeightIndex::read_at`] for a large read at load time: with `direct` and at least [`bulk::DIRECT_MIN`]
    /// bytes, past the page cache ([`bulk::read_direct`]) unless the page cache holds most of it already
    /// ([`bulk::better_buffered`]), else buffered.
    pub fn read_large(&self, file: usize, offset: u64, dst: &mut [u8], direct: bool) -> Result<()> {
        let mf = &self.files[file];
        if direct
            && dst.len() >= bulk::DIRECT_MIN
            && !bulk::better_buffered(mf, offset, dst.len() as u64)
            && bulk::read_direct(mf, offset, dst)?
        {
            return Ok(());
        }
        self.read_at(file, offset, dst)
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
