//! Pre-tokenizer regexes for GGUF byte-level BPE vocabularies, keyed by `tokenizer.ggml.pre`.
//!
//! A copy of llama.cpp's table (`src/llama-vocab.cpp`, tag b11434: the `tokenizer_pre` string -> `LLAMA_VOCAB_PRE_TYPE_*`
//! mapping and `llm_tokenizer_bpe`'s `regex_exprs` per type). Each regex splits every piece left by the previous one,
//! keeping both matches and the text between them, which is what a `Sequence` of `Split(.., Isolated)` does in the
//! `tokenizers` crate. Pre-types that need a custom splitter in llama.cpp (afmoe digits, superbpe) or no byte-level
//! encoding (gemma4, sarvam-moe, mmbert, whitespace) are not here: an unknown name is refused, never guessed.

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
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp runs a hand-written splitter for this regex (from Kimi's `tokenization_kimi.py`).
const KIMI_K2: &str = r"[\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const FINNISH: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

const fn entry(name: &'static str, regexes: &'static [&'static str]) -> PreType {
    PreType { name, regexes, ignore_merges: false, add_bos: false, no_bos: false }
}

const DEFAULT: PreType = entry(
    "default",
    &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
);

/// Every `tokenizer.ggml.pre` value this table accepts, grouped by type, for the "unknown pre-tokenizer" message.
pub const SUPPORTED: &[(&str, &[&str])] = &[
    ("default", &["default"]),
    ("llama3", &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"]),
    ("dbrx", &["dbrx", "smaug-bpe"]),
    ("deepseek-llm", &["deepseek-llm"]),
    ("deepseek-coder", &["deepseek-coder"]),
    ("deepseek-v3", &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"]),
    ("falcon", &["falcon"]),
    ("gpt2", &["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling"]),
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
            &[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"],
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
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
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
