//! Every chat template in tests/fixtures/chat-templates renders every conversation of cases.json (a system
//! prompt, several turns, tools offered, a tool call and its result, reasoning in the history, thinking on and
//! off) exactly as Python's jinja2 renders it the way transformers' `apply_chat_template` does: expected.json,
//! written by tools/render_chat_templates.py.

use std::path::PathBuf;

use engine::tokenizer::ChatTemplate;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat-templates")
}

fn read_json(name: &str) -> Value {
    let p = dir().join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_template_renders_every_case_as_jinja2_does() {
    let spec = read_json("cases.json");
    let expected = read_json("expected.json");
    let expected = expected.as_object().expect("expected.json: an object");
    let now = spec["now_unix"].as_u64().expect("now_unix");
    let (bos, eos) = (spec["bos_token"].as_str(), spec["eos_token"].as_str());
    let cases = spec["cases"].as_array().expect("cases");
    let mut n_templates = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(dir()).expect("read the templates") {
        let path = entry.expect("entry").path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).filter(|n| n.ends_with(".jinja")) else {
            continue;
        };
        n_templates += 1;
        let want = expected.get(name).unwrap_or_else(|| panic!("{name}: not in expected.json (rerun the script)"));
        let src = std::fs::read_to_string(&path).expect("read");
        let mut t = ChatTemplate::new(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
        t.set_clock(now);
        for case in cases {
            let cname = case["name"].as_str().expect("name");
            let mut extra = json!({
                "tools": if case["tools"] == json!(true) { spec["tools"].clone() } else { Value::Null },
                "documents": null,
            });
            if let Some(v) = case.get("enable_thinking") {
                extra["enable_thinking"] = v.clone();
            }
            let agp = case["add_generation_prompt"].as_bool().expect("add_generation_prompt");
            let got = t.render_json(&case["messages"], agp, bos, eos, &extra);
            match (&want[cname]["text"], &want[cname]["error"], got) {
                (Value::String(w), _, Ok(g)) if *w == g => {}
                (Value::String(w), _, Ok(g)) => {
                    failures.push(format!("{name} / {cname}:\n--- jinja2\n{w}\n--- flash-moe\n{g}"))
                }
                (Value::String(_), _, Err(e)) => failures.push(format!("{name} / {cname}: flash-moe fails: {e}")),
                (_, Value::String(w), Err(e)) if e.to_string().contains(w.as_str()) => {}
                (_, w, got) => failures.push(format!("{name} / {cname}: jinja2 fails with {w}, flash-moe: {got:?}")),
            }
        }
    }
    assert!(n_templates >= 10, "templates found: {n_templates}");
    assert!(failures.is_empty(), "{} differences:\n{}", failures.len(), failures.join("\n\n"));
}
