//! GGUF tokenizers against llama.cpp (tag b11434).
//!
//! - SmolLM2-135M-Instruct (gpt2 model, pre "smollm") against ids recorded from llama.cpp's `llama-tokenize`. The
//!   model file must be at `models/` (run `tools/fetch_smollm2.sh`); these tests fail, not skip, without it.
//! - llama.cpp's own vocabulary fixtures (`models/ggml-vocab-*.gguf` with `.inp`/`.out`, the data of its
//!   `test-tokenizer-0`), for every byte-level BPE pre-tokenizer they cover. Those files live in a llama.cpp checkout,
//!   not in this repository, so that test is `#[ignore]`d: run it with
//!   `LLAMA_CPP_DIR=/path/to/llama.cpp cargo test -p flash-moe-engine --test tokenizer_llama_cpp -- --ignored`.
//!
//! The GGUF metadata is read by a small reader in this file, independent of the engine's GGUF reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine::tokenizer::{ChatMessage, ChatTemplate, GgufTokenizerData, StreamDecoder, Tokenizer};

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

fn smollm2() -> (Tokenizer, GgufTokenizerData) {
    let kv = read_metadata(&smollm2_path()).unwrap_or_else(|e| panic!("reading SmolLM2 metadata: {e}"));
    let data = tokenizer_data(&kv);
    let tokenizer = Tokenizer::from_gguf(data.clone()).unwrap_or_else(|e| panic!("SmolLM2 tokenizer: {e}"));
    (tokenizer, data)
}

/// (name, text, parse_special, ids) from llama.cpp tag b11434:
/// `llama-tokenize -m SmolLM2-135M-Instruct.Q4_1.gguf -f TEXT_FILE --ids --log-disable --no-escape`
/// (+ `--no-parse-special` where parse_special is false; llama-tokenize parses special tokens by default).
/// SmolLM2's GGUF says add_bos_token = false, so llama-tokenize added no BOS.
const LLAMA_CPP_B11434: &[(&str, &str, bool, &[u32])] = &[
    ("hello", "Hello world", true, &[19556, 905]),
    (
        "code",
        "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
        true,
        &[
            7853, 1085, 1000, 1662, 472, 1303, 1792, 446, 37024, 21653, 33, 28, 216, 34, 28, 216, 35, 26695, 472, 1628,
            34115, 17, 45257, 42, 47, 29394, 1792, 4258, 198, 109, 198,
        ],
    ),
    (
        "whitespace",
        "a  b   c\t\td\n\n\n  e    \n",
        true,
        &[81, 216, 278, 256, 265, 197, 197, 84, 1116, 3805, 297, 289, 198],
    ),
    ("digits", "12345678", true, &[33, 34, 35, 36, 37, 38, 39, 40]),
    (
        "unicode",
        "h\u{e9}llo w\u{f6}rld \u{2014} na\u{ef}ve caf\u{e9}, \u{c5}ngstr\u{f6}m",
        true,
        &[88, 2756, 31394, 267, 29989, 400, 1841, 15486, 46494, 37366, 28, 5549, 223, 863, 1321, 45682],
    ),
    (
        "emoji_cjk",
        "emoji \u{1F600}\u{1F44D}\u{1F3FD} and \u{4e2d}\u{6587}\u{5b57}\u{7b26} \u{65e5}\u{672c}\u{8a9e}",
        true,
        &[
            391, 33777, 40303, 218, 10813, 235, 231, 10813, 233, 138, 284, 216, 28589, 29184, 36518, 40562, 116, 17097,
            241, 115, 40993, 179, 120, 248,
        ],
    ),
    ("chatml_special", "<|im_start|>user\nhi<|im_end|>", true, &[1, 4093, 198, 6004, 2]),
    (
        "chatml_plain",
        "<|im_start|>user\nhi<|im_end|>",
        false,
        &[44, 108, 306, 79, 3738, 108, 46, 4093, 198, 6004, 44, 108, 306, 79, 486, 108, 46],
    ),
    (
        "contractions",
        "I'm sure you've seen they'll DON'T",
        true,
        &[57, 5248, 2090, 346, 3543, 2269, 502, 3060, 422, 2154, 23, 68],
    ),
];

#[test]
fn metadata_is_what_smollm2_declares() {
    let (t, data) = smollm2();
    assert_eq!(data.model, "gpt2");
    assert_eq!(data.pre.as_deref(), Some("smollm"));
    assert_eq!(t.n_vocab(), 49152);
    assert!(!t.add_bos());
    assert_eq!(t.token_bytes(1), b"<|im_start|>");
    assert_eq!(t.token_bytes(2), b"<|im_end|>");
    assert!(t.is_eog(2), "<|im_end|> must end generation: {:?}", t.eos_ids());
    assert!(t.is_eog(0), "<|endoftext|> must end generation: {:?}", t.eos_ids());
    assert!(t.chat_template().is_some_and(|c| c.contains("<|im_start|>")));
}

#[test]
fn encodes_exactly_like_llama_cpp_b11434() {
    let (t, _) = smollm2();
    let mut mismatches = Vec::new();
    for &(name, text, parse_special, want) in LLAMA_CPP_B11434 {
        let got = t.encode(text, true, parse_special).unwrap_or_else(|e| panic!("{name}: {e}"));
        if got != want {
            mismatches.push(format!("{name}:\n  llama.cpp {want:?}\n  flash-moe {got:?}"));
        }
        assert_eq!(t.decode(&got).expect("decodes"), text, "{name}: decode(encode(text)) != text");
    }
    assert!(mismatches.is_empty(), "differs from llama.cpp b11434:\n{}", mismatches.join("\n"));
}

#[test]
fn streams_emoji_and_cjk_split_across_byte_tokens() {
    let (t, _) = smollm2();
    let (_, text, _, ids) = LLAMA_CPP_B11434.iter().find(|c| c.0 == "emoji_cjk").expect("case");
    let mut d = StreamDecoder::new();
    let mut pieces = Vec::new();
    for &id in *ids {
        let piece = d.push(&t, id).expect("in vocabulary");
        assert!(!piece.contains('\u{FFFD}'), "broken UTF-8 emitted for id {id}");
        pieces.push(piece);
    }
    assert_eq!(d.flush(), "");
    assert_eq!(pieces.concat(), *text);
    // At least one token ended mid-character and produced nothing until the next one.
    assert!(pieces.iter().any(String::is_empty), "{pieces:?}");
}

#[test]
fn embedded_chat_template_renders_chatml() {
    let (t, _) = smollm2();
    let template = ChatTemplate::new(t.chat_template().expect("SmolLM2 has a template")).expect("compiles");
    let messages = [ChatMessage::new("user", "hi")];
    let text = template.render(&messages, true, t.bos_token().as_deref(), t.eos_token().as_deref()).expect("renders");
    assert!(text.ends_with("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"), "{text:?}");
    let ids = t.encode(&text, true, true).expect("encodes");
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), text.matches("<|im_start|>").count());
}

/// llama.cpp's `test-tokenizer-0` cases: inputs separated by "\n__ggml_vocab_test__\n", one line of ids each.
fn vocab_cases(inp: &str, out: &str) -> Vec<(String, Vec<u32>)> {
    const SEP: &str = "\n__ggml_vocab_test__\n";
    // As llama.cpp splits: a separator at the very end does not start another input.
    let inputs: Vec<&str> = inp.strip_suffix(SEP).unwrap_or(inp).split(SEP).collect();
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap_or_else(|e| panic!("id {t:?}: {e}"))).collect())
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "inputs and outputs differ in number");
    inputs.into_iter().map(str::to_string).zip(outputs).collect()
}

#[test]
#[ignore = "needs a llama.cpp checkout: set LLAMA_CPP_DIR and run with --ignored"]
fn matches_llama_cpp_vocab_fixtures() {
    let dir = std::env::var_os("LLAMA_CPP_DIR")
        .map(PathBuf::from)
        .expect("set LLAMA_CPP_DIR to a llama.cpp checkout (with models/ggml-vocab-*.gguf)")
        .join("models");
    // Byte-level BPE vocabularies; the others (llama-spm, phi-3, bert-bge, gemma-4, ...) must be refused.
    let bpe = [
        "command-r",
        "deepseek-coder",
        "deepseek-llm",
        "falcon",
        "gpt-2",
        "llama-bpe",
        "mpt",
        "qwen2",
        "qwen35",
        "refact",
        "starcoder",
    ];
    let mut report = Vec::new();
    let mut n_failed = 0;
    for name in bpe {
        let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
        let kv = read_metadata(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data = tokenizer_data(&kv);
        let pre = data.pre.clone();
        let t = match Tokenizer::from_gguf(data) {
            Ok(t) => t,
            Err(e) => {
                n_failed += 1;
                report.push(format!("{name}: refused: {e}"));
                continue;
            }
        };
        let read = |ext: &str| {
            let path = dir.join(format!("ggml-vocab-{name}.gguf.{ext}"));
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let cases = vocab_cases(&read("inp"), &read("out"));
        let mut n_bad = 0;
        for (text, want) in &cases {
            let got = t.encode(text, false, false).unwrap_or_else(|e| panic!("{name}: {e}"));
            if &got != want {
                n_bad += 1;
                report.push(format!("  {name} {text:?}:\n    llama.cpp {want:?}\n    flash-moe {got:?}"));
            }
        }
        n_failed += usize::from(n_bad > 0);
        report.push(format!("{name} (pre {pre:?}): {}/{} cases identical", cases.len() - n_bad, cases.len()));
    }
    for name in ["llama-spm", "phi-3", "bert-bge"] {
        let kv = read_metadata(&dir.join(format!("ggml-vocab-{name}.gguf"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(Tokenizer::from_gguf(tokenizer_data(&kv)).is_err(), "{name} should be refused");
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(n_failed, 0, "{}", report.join("\n"));
}
