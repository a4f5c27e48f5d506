//! `Tokenizer::from_hf_file` on a small hand-written `tokenizer.json` + `tokenizer_config.json` +
//! `generation_config.json`.

use std::path::PathBuf;

use engine::tokenizer::Tokenizer;
use serde_json::json;

fn byte_char(b: u8) -> char {
    let printable = |b: u8| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + n).expect("valid char")
}

/// A directory with the three files; `config` is tokenizer_config.json.
fn write_model(name: &str, config: serde_json::Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flash-moe-tokenizer-hf-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b));
    }
    let mut merges = Vec::new();
    let mut acc = String::from("H");
    for c in ["e", "l", "l", "o"] {
        merges.push(format!("{acc} {c}"));
        acc.push_str(c);
        vocab.insert(acc.clone(), json!(vocab.len()));
    }
    let n = vocab.len();
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(n, "<s>"), special(n + 1, "<|im_end|>"), special(n + 2, "<|endoftext|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("write");
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");
    std::fs::write(dir.join("generation_config.json"), json!({"eos_token_id": [n + 1, n + 2]}).to_string())
        .expect("write");
    dir
}

#[test]
fn loads_tokenizer_json_with_its_config() {
    let config = json!({
        "bos_token": "<s>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "add_bos_token": true,
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"
    });
    let dir = write_model("config", config);
    let t = Tokenizer::from_hf_file(&dir.join("tokenizer.json")).expect("loads");
    let hello = 256 + 3;
    let (bos, im_end, eot) = (260, 261, 262);
    assert_eq!(t.n_vocab(), 263);
    assert_eq!(t.bos_id(), Some(bos));
    assert_eq!(t.bos_token().as_deref(), Some("<s>"));
    assert_eq!(t.eos_token().as_deref(), Some("<|im_end|>"));
    assert_eq!(t.eos_ids(), [im_end, eot]);
    assert!(t.add_bos());
    assert_eq!(t.encode("Hello", true, true).expect("encodes"), [bos, hello]);
    assert_eq!(t.encode("Hello<|im_end|>", false, true).expect("encodes"), [hello, im_end]);
    let plain = t.encode("Hello<|im_end|>", false, false).expect("encodes");
    assert!(!plain.contains(&im_end), "{plain:?}");
    assert_eq!(t.decode(&plain).expect("decodes"), "Hello<|im_end|>");
    let text = "Hello, wörld 😀\n";
    assert_eq!(t.decode(&t.encode(text, false, false).expect("encodes")).expect("decodes"), text);
    assert_eq!(t.chat_template(), Some("{% for m in messages %}{{ m.content }}{% endfor %}"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn chat_template_list_and_missing_files() {
    let config =
        json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
    let dir = write_model("list", config);
    let t = Tokenizer::from_hf_file(&dir.join("tokenizer.json")).expect("loads");
    assert_eq!(t.chat_template(), Some("D"));
    assert_eq!(t.bos_id(), None);
    assert!(!t.add_bos());
    std::fs::remove_dir_all(&dir).ok();

    let missing = std::env::temp_dir().join("flash-moe-no-such-dir/tokenizer.json");
    assert!(Tokenizer::from_hf_file(&missing).is_err());
}
