// llama_logits: reference logits and greedy tokens from llama.cpp, run strictly
// (flash attention off, f32 KV cache, one thread), for flash-moe's fixtures.
//
// Build (tools/make_fixtures.py does this; LLAMA_CPP_DIR is the llama.cpp source tree):
//   g++ -O2 -std=c++17 tools/llama_logits.cpp -I$LLAMA_CPP_DIR/include -I$LLAMA_CPP_DIR/ggml/include \
//       -L$LLAMA_CPP_DIR/build/bin -Wl,-rpath,$LLAMA_CPP_DIR/build/bin -lllama -lggml -lggml-base -o llama_logits
//
// Usage:
//   llama_logits MODEL.gguf N_GREEDY OUT_PREFIX --ids 1,2,3      token ids as given (no BOS added)
//   llama_logits MODEL.gguf N_GREEDY OUT_PREFIX --text "..."     tokenized by llama.cpp like llama-completion
//                                                                (add_special = the GGUF's add_bos, parse_special)
// OUT_PREFIX "-" writes no logits. Otherwise writes
//   OUT_PREFIX.npy         float32 [n_prompt, n_vocab]  logits at every prompt position
//   OUT_PREFIX.greedy.npy  float32 [N_GREEDY, n_vocab]  row i = the logits greedy token i was picked from
//                                                       (row 0 equals the last prompt row)
// and prints one JSON object on stdout: prompt_ids, add_bos, greedy_ids, greedy_margins (top1 - top2 logit), n_vocab.
// Greedy decoding never stops at end-of-generation tokens: it always takes N_GREEDY steps.
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void write_npy(const std::string & path, const std::vector<float> & data, size_t rows, size_t cols) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                         std::to_string(cols) + "), }";
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    FILE * f = fopen(path.c_str(), "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path.c_str()); exit(1); }
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    fwrite(magic, 1, 8, f);
    const unsigned short hlen = (unsigned short) header.size();
    fwrite(&hlen, 2, 1, f);  // little-endian hosts only
    fwrite(header.data(), 1, header.size(), f);
    fwrite(data.data(), sizeof(float), rows * cols, f);
    fclose(f);
}

// argmax (lowest index wins ties, like torch.argmax) and the margin to the runner-up
static int argmax(const float * x, int n, float * margin) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    float second = -INFINITY;
    for (int i = 0; i < n; i++) if (i != best && x[i] > second) second = x[i];
    *margin = x[best] - second;
    return best;
}

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s MODEL N_GREEDY OUT_PREFIX (--ids a,b,c | --text STR)\n", argv[0]); return 2; }
    const std::string model_path = argv[1], out_prefix = argv[3], mode = argv[4], arg = argv[5];
    const int n_greedy = atoi(argv[2]);

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (!model) { fprintf(stderr, "cannot load %s\n", model_path.c_str()); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    const bool add_bos = llama_vocab_get_add_bos(vocab);

    std::vector<llama_token> prompt;
    if (mode == "--ids") {
        for (const char * p = arg.c_str(); *p; ) {
            char * end;
            prompt.push_back((llama_token) strtol(p, &end, 10));
            p = (*end == ',') ? end + 1 : end;
        }
    } else if (mode == "--text") {
        prompt.resize(arg.size() + 8);
        const int n = llama_tokenize(vocab, arg.c_str(), (int) arg.size(), prompt.data(), (int) prompt.size(), add_bos, true);
        if (n < 0) { fprintf(stderr, "tokenize failed\n"); return 1; }
        prompt.resize(n);
    } else { fprintf(stderr, "unknown mode %s\n", mode.c_str()); return 2; }
    const int n_prompt = (int) prompt.size();

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = ((n_prompt + n_greedy + 255) / 256) * 256;
    cparams.n_batch = cparams.n_ctx;
    cparams.n_ubatch = cparams.n_ctx;
    cparams.n_seq_max = 1;
    cparams.n_threads = 1;
    cparams.n_threads_batch = 1;
    cparams.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cparams.type_k = GGML_TYPE_F32;
    cparams.type_v = GGML_TYPE_F32;
    cparams.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) { fprintf(stderr, "cannot create context\n"); return 1; }

    // prompt: one batch, logits at every position
    llama_batch batch = llama_batch_init(n_prompt, 0, 1);
    for (int i = 0; i < n_prompt; i++) {
        batch.token[i] = prompt[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n_prompt;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "prompt decode failed\n"); return 1; }
    std::vector<float> prompt_logits((size_t) n_prompt * n_vocab);
    for (int i = 0; i < n_prompt; i++) memcpy(&prompt_logits[(size_t) i * n_vocab], llama_get_logits_ith(ctx, i), n_vocab * sizeof(float));
    llama_batch_free(batch);

    // greedy: one token at a time through the KV cache
    std::vector<float> greedy_logits((size_t) n_greedy * n_vocab);
    std::vector<int> greedy_ids;
    std::vector<float> margins;
    const float * row = &prompt_logits[(size_t) (n_prompt - 1) * n_vocab];
    for (int step = 0; step < n_greedy; step++) {
        memcpy(&greedy_logits[(size_t) step * n_vocab], row, n_vocab * sizeof(float));
        float margin;
        llama_token tok = argmax(row, n_vocab, &margin);
        greedy_ids.push_back(tok);
        margins.push_back(margin);
        if (step + 1 == n_greedy) break;
        if (llama_decode(ctx, llama_batch_get_one(&tok, 1)) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        row = llama_get_logits_ith(ctx, -1);
    }

    if (out_prefix != "-") {
        write_npy(out_prefix + ".npy", prompt_logits, n_prompt, n_vocab);
        write_npy(out_prefix + ".greedy.npy", greedy_logits, n_greedy, n_vocab);
    }
    printf("{\"n_vocab\": %d, \"add_bos\": %s, \"prompt_ids\": [", n_vocab, add_bos ? "true" : "false");
    for (int i = 0; i < n_prompt; i++) printf("%s%d", i ? ", " : "", prompt[i]);
    printf("], \"greedy_ids\": [");
    for (int i = 0; i < n_greedy; i++) printf("%s%d", i ? ", " : "", greedy_ids[i]);
    printf("], \"greedy_margins\": [");
    for (int i = 0; i < n_greedy; i++) printf("%s%.6g", i ? ", " : "", margins[i]);
    printf("]}\n");

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
