//! Pre-tokenizer regexes for GGUF byte-level BPE vocabularies, keyed by `tokenizer.ggml.pre`.
//!
//! A copy of llama.cpp's table (`src/llama-vocab.cpp`, tag b11434: the `tokenizer_pre` string ->
//! `LLAMA_VOCAB_PRE_TYPE_*` mapping and `llm_tokenizer_bpe`'s `regex_exprs` per type). Each regex splits every piece
//! left by the previous one, keeping both matches and the text between them, which is what a `Sequence` of
//! `Split(.., Isolated)` does in the `tokenizers` crate. llama.cpp's own vocabulary fixtures agree with this on every
//! case (see `tests/tokenizer_llama_cpp.rs`). Pre-types that need a custom splitter in llama.cpp (afmoe digits, superbpe) or no byte-level
//! encoding (gemma4, sarvam-moe, mmbert, whitespace) are not here: an unknown name is refused, never guessed.
//! Non-ASCII characters in the regexes are written as `\x{..}` escapes so that no editor's Unicode normalization
//! can silently change them (NFC turns some range ends in deepseek-llm's classes into other code points).

/// How one family of `tokenizer.ggml.pre` names tokenizes.
#[derive(Debug, Clone, Copy)]
pub struct PreType {
    /// llama.cpp's name for the type, for messages.
    pub name: &'static str,
    /// Applied in order; each one splits the pieces the previous ones produced.
    pub regexes: &'static [&'static str],
    /// A whole pre-token that is in the vocabulary becomes that token without running merges.
    pub ignore_merges: bool,
    /// The default for `add_bos` when the GGUF has no `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// llama.cpp drops the BOS id for this type (ChatGLM4 / GLM-4).
    pub no_bos: bool,
}

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK3: &[&str] = &[
    r"\p{N}{1,3}",
    r"[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp runs a hand-written splitter for this regex (from Kimi's `tokenization_kimi.py`).
const KIMI_K2: &str = r"[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const FINNISH: &str = r" ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+";

const fn entry(name: &'static str, regexes: &'static [&'static str]) -> PreType {
    PreType { name, regexes, ignore_merges: false, add_bos: false, no_bos: false }
}

const DEFAULT: PreType = entry("default", &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]);

/// Every `tokenizer.ggml.pre` value this table accepts, grouped by type, for the "unknown pre-tokenizer" message.
pub const SUPPORTED: &[(&str, &[&str])] = &[
    ("default", &["default"]),
    (
        "llama3",
        &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"],
    ),
    ("dbrx", &["dbrx", "smaug-bpe"]),
    ("deepseek-llm", &["deepseek-llm"]),
    ("deepseek-coder", &["deepseek-coder"]),
    ("deepseek-v3", &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"]),
    ("falcon", &["falcon"]),
    (
        "gpt2",
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "mpt",
            "olmo",
            "jais",
            "exaone4",
            "trillion",
            "granite-docling",
        ],
    ),
    ("starcoder", &["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"]),
    ("qwen2", &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open"]),
    ("qwen35", &["qwen35"]),
    ("chatglm4", &["chatglm-bpe", "glm4", "glm5"]),
    ("tekken", &["tekken"]),
    ("gpt4o", &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"]),
    ("kimi-k2", &["kimi-k2"]),
    ("seed-coder", &["seed-coder"]),
    ("grok-2", &["grok-2"]),
    ("bailingmoe", &["bailingmoe", "bailingmoe2", "llada-moe"]),
    ("bloom", &["poro-chat", "bloom", "gpt3-finnish"]),
    ("viking", &["viking"]),
];

/// The pre-tokenizer for a `tokenizer.ggml.pre` value; `None` (key absent) is llama.cpp's "default" (which it warns
/// degrades quality). An unknown name is `None`: the caller refuses the model.
pub fn pre_type(pre: Option<&str>) -> Option<PreType> {
    let Some(pre) = pre else { return Some(DEFAULT) };
    let with = |mut t: PreType, ignore_merges: bool, add_bos: bool| {
        t.ignore_merges = ignore_merges;
        t.add_bos = add_bos;
        t
    };
    let t = match pre {
        "default" => DEFAULT,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => with(entry("llama3", &[LLAMA3]), true, true),
        "dbrx" | "smaug-bpe" => entry("dbrx", &[LLAMA3]),
        "deepseek-llm" => entry("deepseek-llm", DEEPSEEK_LLM),
        "deepseek-coder" => entry(
            "deepseek-coder",
            &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+",
                r"\p{N}",
            ],
        ),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => entry("deepseek-v3", DEEPSEEK3),
        "falcon" => entry(
            "falcon",
            &[
                r"[\p{P}\$\+<=>\^~\|`]+",
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                r"[0-9][0-9][0-9]",
            ],
        ),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4" | "trillion" | "granite-docling" => {
            entry("gpt2", &[GPT2])
        }
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            entry("starcoder", &[r"\p{N}", GPT2])
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan" | "solar-open" => {
            entry("qwen2", &[QWEN2])
        }
        "qwen35" => entry("qwen35", &[QWEN35]),
        "chatglm-bpe" | "glm4" | "glm5" => {
            let mut t = with(entry("chatglm4", &[LLAMA3]), pre != "chatglm-bpe", false);
            t.no_bos = true;
            t
        }
        "tekken" => with(entry("tekken", &[TEKKEN]), true, true),
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => entry("gpt4o", &[GPT4O]),
        "kimi-k2" => entry("kimi-k2", &[KIMI_K2]),
        "seed-coder" => entry("seed-coder", &[SEED_CODER]),
        "grok-2" => entry("grok-2", &[QWEN2]),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => entry("bailingmoe", &[BAILINGMOE]),
        "poro-chat" | "bloom" | "gpt3-finnish" => entry("bloom", &[FINNISH]),
        "viking" => entry("viking", &[FINNISH, r"\p{N}"]),
        _ => return None,
    };
    Some(t)
}

const DEEPSEEK_LLM: &[&str] = &[
    r"[\r\n]",
    r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+",
    r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
    r"\s+$",
    r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+",
    r"\p{N}+",
];

/// The supported names, for error messages.
pub fn supported_names() -> String {
    SUPPORTED.iter().flat_map(|(_, names)| names.iter().copied()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_resolves_and_unknown_does_not() {
        for (group, names) in SUPPORTED {
            for name in *names {
                let t = pre_type(Some(name)).unwrap_or_else(|| panic!("{name} listed but not resolved"));
                assert_eq!(t.name, *group, "{name}");
            }
        }
        assert!(pre_type(Some("no-such-pre")).is_none());
    }
}
