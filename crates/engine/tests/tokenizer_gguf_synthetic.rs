//! `Tokenizer::from_gguf` on small hand-made vocabularies: encoding, special tokens, BOS/EOS, streaming, and
//! malformed metadata that must be refused with an error (never a panic).

use engine::tokenizer::{fuzz_gguf_tokenizer, token_type, ControlText, GgufTokenizerData, StreamDecoder, Tokenizer};
use engine::Error;

/// GPT-2's byte -> char table.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + n).expect("valid char")
}

fn encode_bytes(s: &str) -> String {
    s.bytes().map(byte_char).collect()
}

/// 256 byte tokens, merges for " world" / "Hello", then `<|im_start|>`, `<|im_end|>` (control) and `<tool>`
/// (user-defined).
fn data() -> GgufTokenizerData {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut merges = Vec::new();
    for word in ["Hello", " world"] {
        let chars: Vec<String> = encode_bytes(word).chars().map(String::from).collect();
        let mut acc = chars[0].clone();
        for c in &chars[1..] {
            merges.push(format!("{acc} {c}"));
            acc.push_str(c);
            tokens.push(acc.clone());
        }
    }
    let mut token_types = vec![token_type::NORMAL; tokens.len()];
    for (text, ty) in [("<|im_start|>", token_type::CONTROL), ("<|im_end|>", token_type::CONTROL), ("<tool>", 4)] {
        tokens.push(text.to_string());
        token_types.push(ty);
    }
    let n = tokens.len() as u32;
    GgufTokenizerData {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types: Some(token_types),
        merges,
        bos_id: Some(n - 3),
        eos_id: Some(n - 2),
        add_bos: Some(false),
        ..GgufTokenizerData::default()
    }
}

fn id_of(d: &GgufTokenizerData, text: &str) -> u32 {
    d.tokens.iter().position(|t| t == text).expect("token present") as u32
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
    send_sync::<engine::tokenizer::ChatTemplate>();
}

#[test]
fn encodes_with_merges_and_round_trips() {
    let d = data();
    let t = Tokenizer::from_gguf(d.clone()).expect("builds");
    assert_eq!(t.n_vocab(), d.tokens.len());
    let ids = t.encode("Hello world", false, false).expect("encodes");
    assert_eq!(ids, [id_of(&d, "Hello"), id_of(&d, &encode_bytes(" world"))]);
    for text in ["Hello world", "héllo  wörld\n\n 12345 😀 中文", "", "   "] {
        let ids = t.encode(text, false, true).expect("encodes");
        assert_eq!(t.decode(&ids).expect("decodes"), text);
    }
}

#[test]
fn control_tokens_only_with_parse_special_user_defined_always() {
    let d = data();
    let t = Tokenizer::from_gguf(d.clone()).expect("builds");
    let (start, end, tool) = (id_of(&d, "<|im_start|>"), id_of(&d, "<|im_end|>"), id_of(&d, "<tool>"));
    let ids = t.encode("<|im_start|>Hello<|im_end|>", false, true).expect("encodes");
    assert_eq!(ids, [start, id_of(&d, "Hello"), end]);
    let plain = t.encode("<|im_start|>Hello<|im_end|>", false, false).expect("encodes");
    assert!(!plain.contains(&start) && !plain.contains(&end), "{plain:?}");
    assert_eq!(t.decode(&plain).expect("decodes"), "<|im_start|>Hello<|im_end|>");
    assert!(t.encode("a<tool>b", false, false).expect("encodes").contains(&tool));
    assert_eq!(t.token_bytes(start), b"<|im_start|>");
}

#[test]
fn bos_and_eos() {
    let d = data();
    let t = Tokenizer::from_gguf(d.clone()).expect("builds");
    let bos = d.bos_id.expect("bos");
    assert!(!t.add_bos());
    assert_eq!(t.encode("Hello", true, false).expect("encodes").first(), Some(&id_of(&d, "Hello")));
    let t = Tokenizer::from_gguf(GgufTokenizerData { add_bos: Some(true), ..d.clone() }).expect("builds");
    assert_eq!(t.encode("Hello", true, false).expect("encodes"), [bos, id_of(&d, "Hello")]);
    assert_eq!(t.encode("Hello", false, false).expect("encodes"), [id_of(&d, "Hello")]);
    assert_eq!(t.bos_id(), Some(bos));
    assert_eq!(t.bos_token().as_deref(), Some("<|im_start|>"));
    assert_eq!(t.eos_token().as_deref(), Some("<|im_end|>"));
    assert_eq!(t.eos_ids(), [id_of(&d, "<|im_end|>")]);
    assert!(t.is_eog(id_of(&d, "<|im_end|>")));
    assert!(!t.is_eog(bos));
    let t = Tokenizer::from_gguf(GgufTokenizerData { add_eos: Some(true), ..d.clone() }).expect("builds");
    assert_eq!(t.encode("Hello", true, false).expect("encodes"), [id_of(&d, "Hello"), id_of(&d, "<|im_end|>")]);
    assert_eq!(t.encode("Hello", false, false).expect("encodes"), [id_of(&d, "Hello")]);
    // llama3's pre-type defaults add_bos to true when the GGUF does not say.
    let t = Tokenizer::from_gguf(GgufTokenizerData { add_bos: None, pre: Some("llama-bpe".into()), ..d }).expect("ok");
    assert!(t.add_bos());
}

#[test]
fn stream_decoder_holds_partial_utf8_from_byte_tokens() {
    let t = Tokenizer::from_gguf(data()).expect("builds");
    for text in ["😀", "中文", "a😀b中"] {
        let ids = t.encode(text, false, false).expect("encodes");
        assert!(ids.len() >= text.chars().count());
        let mut d = StreamDecoder::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = d.push(&t, id).expect("in vocab");
            assert!(!piece.contains('\u{FFFD}'), "{text}: broken UTF-8 emitted");
            out.push_str(&piece);
        }
        assert_eq!(d.flush(), "");
        assert_eq!(out, text);
    }
    let mut d = StreamDecoder::new();
    assert!(d.push(&t, u32::MAX).is_err());
}

#[test]
fn stream_decoder_shows_the_control_tokens_it_is_told_to() {
    let d = data();
    let t = Tokenizer::from_gguf(d.clone()).expect("builds");
    let (start, end, tool) = (id_of(&d, "<|im_start|>"), id_of(&d, "<|im_end|>"), id_of(&d, "<tool>"));
    let ids = [start, id_of(&d, "Hello"), tool, end, id_of(&d, &encode_bytes(" world"))];
    let text = |c: ControlText| {
        let mut s = StreamDecoder::showing(c);
        let mut out: String = ids.iter().map(|&id| s.push(&t, id).expect("in vocab")).collect();
        out.push_str(&s.flush());
        out
    };
    assert_eq!(text(ControlText::Shown), "<|im_start|>Hello<tool><|im_end|> world");
    // A user-defined token (`<tool>`) is text, not control: always shown.
    assert_eq!(text(ControlText::Hidden), "Hello<tool> world");
    assert_eq!(text(ControlText::Only(vec![end])), "Hello<tool><|im_end|> world");
    // Only control tokens are looked up: `<tool>` is user-defined, "Hello" plain text.
    assert_eq!(t.control_ids(&["<|im_end|>", "<tool>", "Hello", "<absent>"]), [end]);
    // Hidden or not, an id outside the vocabulary is an error.
    assert!(StreamDecoder::showing(ControlText::Hidden).push(&t, u32::MAX).is_err());
}

fn refused(d: GgufTokenizerData, needle: &str) {
    match Tokenizer::from_gguf(d) {
        Err(Error::Tokenizer(msg)) => {
            assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}")
        }
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("accepted; expected an error containing {needle:?}"),
    }
}

#[test]
fn malformed_metadata_is_an_error_not_a_panic() {
    let d = data();
    let n = d.tokens.len() as u32;
    refused(
        GgufTokenizerData {
            tokens: vec![],
            token_types: None,
            merges: vec![],
            bos_id: None,
            eos_id: None,
            ..d.clone()
        },
        "empty",
    );
    refused(GgufTokenizerData { bos_id: Some(n), ..d.clone() }, "bos_token_id");
    refused(GgufTokenizerData { eos_id: Some(u32::MAX), ..d.clone() }, "eos_token_id");
    let mut bad = d.clone();
    bad.merges.push("Hello nosuchtoken".into());
    refused(bad, "not in the vocabulary");
    let mut bad = d.clone();
    bad.merges.push("nospace".into());
    refused(bad, "separated by a space");
    let mut bad = d.clone();
    bad.merges.push(format!("{} {}", byte_char(b'x'), byte_char(b'y'))); // "xy" is not a token
    refused(bad, "BPE");
    let mut bad = d.clone();
    bad.token_types = Some(vec![1; 3]);
    refused(bad, "token_type");
    let mut bad = d.clone();
    bad.tokens[5] = "x".repeat(1 << 20);
    refused(bad, "bytes long");
    refused(GgufTokenizerData { model: "llama".into(), ..d.clone() }, "'llama'");
    refused(GgufTokenizerData { model: "bert".into(), ..d.clone() }, "'bert'");
    refused(GgufTokenizerData { pre: Some("martian".into()), ..d.clone() }, "'martian'");
    refused(GgufTokenizerData { pre: Some("martian".into()), ..d }, "qwen2");
}

#[test]
fn every_supported_pre_tokenizer_compiles_and_round_trips() {
    let text = "Hello world, it's 2024: 12345678 items!\n\n  \tdone 😀 中文 日本語 Ελληνικά";
    let names = [
        "default",
        "llama-bpe",
        "dbrx",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "gpt-2",
        "smollm",
        "qwen2",
        "qwen35",
        "chatglm-bpe",
        "glm4",
        "tekken",
        "gpt-4o",
        "kimi-k2",
        "seed-coder",
        "grok-2",
        "bailingmoe",
        "bloom",
        "viking",
    ];
    for pre in names {
        let t = Tokenizer::from_gguf(GgufTokenizerData { pre: Some(pre.into()), ..data() })
            .unwrap_or_else(|e| panic!("{pre}: {e}"));
        let ids = t.encode(text, false, false).unwrap_or_else(|e| panic!("{pre}: {e}"));
        assert_eq!(t.decode(&ids).expect("decodes"), text, "{pre}");
    }
}

#[test]
fn fuzz_entry_point_survives_random_bytes() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut n_built = 0;
    for _ in 0..300 {
        let len = rng.gen_range(0..2048);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        n_built += usize::from(fuzz_gguf_tokenizer(&bytes));
    }
    assert!(n_built > 0, "no random input built a tokenizer: the fuzz entry point is too shallow");
}
