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
//
// For tools/ggml_exact: with DUMP_DIR set, an eval callback writes every f32 intermediate tensor of the prompt
// batch and the first 3 single-token steps (steps s0..s3) to $DUMP_DIR, contiguous in ggml's order (ne0 fastest),
// one file per tensor: s<step>_<node index>_<name>.f32, listed in $DUMP_DIR/index.txt with its op and shape
// (tools/ggml_exact/compare_dumps.py compares them with flash-moe's FLASH_MOE_GGML_DUMP files; with the callback
// llama.cpp runs one node at a time, so rms_norm and mul are not fused, which is the same arithmetic). LAST_ONLY=1
// asks for the last prompt position's logits only, as llama-completion does (llama.cpp's last layer then runs its
// feed-forward part on that row alone).
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

#include "ggml.h"
#include "ggml-backend.h"
#include <sys/stat.h>
static int g_step = 0; static int g_idx = 0; static std::string g_dir; static FILE * g_index = nullptr;
static bool dump_cb(struct ggml_tensor * t, bool ask, void *) {
    if (ask) return true;
    if (t->type != GGML_TYPE_F32) return true;
    if (t->op == GGML_OP_VIEW || t->op == GGML_OP_PERMUTE || t->op == GGML_OP_RESHAPE || t->op == GGML_OP_TRANSPOSE) return true;
    if (g_step > 3) return true;
    char path[512];
    snprintf(path, sizeof path, "%s/s%d_%04d_%s.f32", g_dir.c_str(), g_step, g_idx++, t->name);
    for (char * c = path + g_dir.size() + 1; *c; c++) if (*c == ' ' || *c == '(' || *c == ')') *c = '_';
    std::vector<float> buf(ggml_nelements(t));
    std::vector<char> raw(ggml_nbytes(t));
    ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
    size_t k = 0;
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++) for (int64_t i2 = 0; i2 < t->ne[2]; i2++) for (int64_t i1 = 0; i1 < t->ne[1]; i1++) for (int64_t i0 = 0; i0 < t->ne[0]; i0++)
        buf[k++] = *(float *)(raw.data() + i0*t->nb[0] + i1*t->nb[1] + i2*t->nb[2] + i3*t->nb[3]);
    FILE * f = fopen(path, "wb"); fwrite(buf.data(), 4, buf.size(), f); fclose(f);
    fprintf(g_index, "%s %s %lld %lld %lld %lld\n", path, ggml_op_desc(t), (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
    return true;
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
    if (getenv("DUMP_DIR")) {
        g_dir = getenv("DUMP_DIR");
        mkdir(g_dir.c_str(), 0755);
        g_index = fopen((g_dir + "/index.txt").c_str(), "w");
        if (!g_index) { fprintf(stderr, "cannot write %s/index.txt\n", g_dir.c_str()); return 1; }
        cparams.cb_eval = dump_cb;
        cparams.cb_eval_user_data = nullptr;
    }
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) { fprintf(stderr, "cannot create context\n"); return 1; }

    // prompt: one batch, logits at every position (LAST_ONLY=1: at the last only)
    const bool last_only = getenv("LAST_ONLY") && atoi(getenv("LAST_ONLY")) != 0;
    llama_batch batch = llama_batch_init(n_prompt, 0, 1);
    for (int i = 0; i < n_prompt; i++) {
        batch.token[i] = prompt[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = !last_only || i == n_prompt - 1;
    }
    batch.n_tokens = n_prompt;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "prompt decode failed\n"); return 1; }
    std::vector<float> prompt_logits((size_t) n_prompt * n_vocab);
    for (int i = last_only ? n_prompt - 1 : 0; i < n_prompt; i++) memcpy(&prompt_logits[(size_t) i * n_vocab], llama_get_logits_ith(ctx, i), n_vocab * sizeof(float));
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
        g_step++; g_idx = 0;
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

    if (g_index) fclose(g_index);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
