//! SmolLM2-135M-Instruct's GGUF tokenizer (gpt2 model, pre "smollm") against ids from llama.cpp's `llama-tokenize`.
//!
//! The GGUF metadata is read by a small reader in this file, independent of the engine's GGUF reader. The model
//! file must be at `models/` (run `tools/fetch_smollm2.sh`); the tests fail, not skip, without it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine::tokenizer::GgufTokenizerData;

#[derive(Debug, Clone)]
pub enum Meta {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("truncated GGUF header")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "u32")?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "u64")?))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32) -> Result<Meta, String> {
        Ok(match ty {
            0 => Meta::Int(self.take(1)?[0] as i64),
            1 => Meta::Int(self.take(1)?[0] as i8 as i64),
            2 => Meta::Int(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| "u16")?) as i64),
            3 => Meta::Int(i16::from_le_bytes(self.take(2)?.try_into().map_err(|_| "i16")?) as i64),
            4 => Meta::Int(self.u32()? as i64),
            5 => Meta::Int(self.u32()? as i32 as i64),
            6 => Meta::Float(f32::from_bits(self.u32()?) as f64),
            7 => Meta::Bool(self.take(1)?[0] != 0),
            8 => Meta::Str(self.string()?),
            9 => {
                let item_ty = self.u32()?;
                let n = self.u64()? as usize;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item_ty)?);
                }
                Meta::Array(items)
            }
            10 => Meta::Int(self.u64()? as i64),
            11 => Meta::Int(self.u64()? as i64),
            12 => Meta::Float(f64::from_bits(self.u64()?)),
            other => return Err(format!("unknown GGUF value type {other}")),
        })
    }
}

/// Every metadata key-value of a GGUF file (v2/v3).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, Meta>, String> {
    let buf = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = Reader { buf: &buf, pos: 0 };
    if r.take(4)? != b"GGUF" {
        return Err("not a GGUF file".into());
    }
    let version = r.u32()?;
    if version < 2 {
        return Err(format!("GGUF version {version} not supported by this test reader"));
    }
    let _n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    let mut kv = HashMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        kv.insert(key, r.value(ty)?);
    }
    Ok(kv)
}

fn strings(m: Option<&Meta>) -> Vec<String> {
    match m {
        Some(Meta::Array(items)) => {
            items.iter().filter_map(|i| if let Meta::Str(s) = i { Some(s.clone()) } else { None }).collect()
        }
        _ => Vec::new(),
    }
}

fn id(m: Option<&Meta>) -> Option<u32> {
    if let Some(Meta::Int(i)) = m {
        u32::try_from(*i).ok()
    } else {
        None
    }
}

fn string(m: Option<&Meta>) -> Option<String> {
    if let Some(Meta::Str(s)) = m {
        Some(s.clone())
    } else {
        None
    }
}

fn boolean(m: Option<&Meta>) -> Option<bool> {
    if let Some(Meta::Bool(b)) = m {
        Some(*b)
    } else {
        None
    }
}

/// The tokenizer keys, as the engine will fill them.
pub fn tokenizer_data(kv: &HashMap<String, Meta>) -> GgufTokenizerData {
    let k = |name: &str| kv.get(&format!("tokenizer.ggml.{name}"));
    let token_types = match k("token_type") {
        Some(Meta::Array(items)) => {
            Some(items.iter().map(|i| if let Meta::Int(v) = i { *v as i32 } else { 0 }).collect())
        }
        _ => None,
    };
    GgufTokenizerData {
        model: string(k("model")).unwrap_or_default(),
        pre: string(k("pre")),
        tokens: strings(k("tokens")),
        token_types,
        merges: strings(k("merges")),
        bos_id: id(k("bos_token_id")),
        eos_id: id(k("eos_token_id")),
        eot_id: id(k("eot_token_id")),
        eom_id: id(k("eom_token_id")),
        pad_id: id(k("padding_token_id")),
        unk_id: id(k("unknown_token_id")),
        add_bos: boolean(k("add_bos_token")),
        add_eos: boolean(k("add_eos_token")),
        chat_template: string(kv.get("tokenizer.chat_template")),
    }
}

/// `models/SmolLM2-135M-Instruct.Q4_1.gguf` at the repository root; panics with how to get it when absent.
pub fn smollm2_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run tools/fetch_smollm2.sh from the repository root to download it",
        path.display()
    );
    path
}
