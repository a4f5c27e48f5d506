// ggml_ops: runs single ggml-cpu ops on pseudo-random inputs and writes inputs and outputs to one file, the
// fixture that engine::ggml_exact's unit tests compare against bit for bit (tests/fixtures/ggml_exact/ops.bin).
//
// Build against a llama.cpp build (GGML_NATIVE, so the CPU's own SIMD paths run; the fixture in the repository
// came from llama.cpp b11434 on an AVX-512 Zen4):
//   cc -O2 tools/ggml_exact/ggml_ops.c -I$LLAMA_CPP_DIR/ggml/include -L$LLAMA_CPP_DIR/build/bin \
//      -Wl,-rpath,$LLAMA_CPP_DIR/build/bin -lggml -lggml-base -lggml-cpu -lm -o ggml_ops
//   ./ggml_ops tests/fixtures/ggml_exact/ops.bin
//
// File: records of (u32 name length, name, u32 byte count, bytes), little-endian; f32 tensors in ggml's order
// (ne0 fastest). One thread, like the reference runs.
#include "ggml.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE * out;
static uint32_t rng = 12345;

// exact in any language: 24 random bits scaled by a power of two
static float rnd(float scale) {
    rng = rng * 1664525u + 1013904223u;
    return ((float) (rng >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale;
}

static void put(const char * name, const void * data, size_t n) {
    uint32_t l = (uint32_t) strlen(name), m = (uint32_t) n;
    fwrite(&l, 4, 1, out); fwrite(name, 1, l, out); fwrite(&m, 4, 1, out); fwrite(data, 1, n, out);
}

static void put_t(const char * name, const struct ggml_tensor * t) { put(name, t->data, ggml_nbytes(t)); }

static struct ggml_tensor * rand_t(struct ggml_context * ctx, const char * name, float scale, int64_t ne0, int64_t ne1, int64_t ne2) {
    struct ggml_tensor * t = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, ne0, ne1, ne2);
    float * d = (float *) t->data;
    for (int64_t i = 0; i < ggml_nelements(t); i++) d[i] = rnd(scale);
    put_t(name, t);
    return t;
}

static void run(struct ggml_context * ctx, struct ggml_tensor * r, const char * name) {
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, r);
    if (ggml_graph_compute_with_ctx(ctx, gf, 1) != GGML_STATUS_SUCCESS) { fprintf(stderr, "%s failed\n", name); exit(1); }
    put_t(name, r);
}

// a [cols, rows] weight of `type` quantized by ggml from random floats; its bytes are written as NAME
// A random weight of `type`: `n` matrices (experts) of [rows x cols].
static struct ggml_tensor * quant_t(struct ggml_context * ctx, const char * name, enum ggml_type type, int64_t cols, int64_t rows, int64_t n) {
    float * src = malloc(sizeof(float) * cols * rows * n);
    for (int64_t i = 0; i < cols * rows * n; i++) src[i] = rnd(0.1f);
    struct ggml_tensor * t = ggml_new_tensor_3d(ctx, type, cols, rows, n);
    ggml_quantize_chunk(type, src, t->data, 0, rows * n, cols, NULL);
    free(src);
    put_t(name, t);
    return t;
}

int main(int argc, char ** argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s OUT.bin\n", argv[0]); return 2; }
    out = fopen(argv[1], "wb");
    if (!out) { perror(argv[1]); return 1; }
    struct ggml_init_params ip = { 64 * 1024 * 1024, NULL, false };
    struct ggml_context * ctx = ggml_init(ip);

    // soft_max_ext: 3 rows of 256 scores, causal-style mask (1, 100, 256 valid), scale 1/8
    {
        struct ggml_tensor * x = rand_t(ctx, "softmax.x", 8.0f, 256, 3, 1);
        struct ggml_tensor * m = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 256, 3);
        const int valid[3] = { 1, 100, 256 };
        for (int r = 0; r < 3; r++) for (int i = 0; i < 256; i++) ((float *) m->data)[r * 256 + i] = i < valid[r] ? 0.0f : -INFINITY;
        run(ctx, ggml_soft_max_ext(ctx, x, m, 0.125f, 0.0f), "softmax.out");
    }
    // swiglu_split(gate, up): 1544 = 96 x 16 + a scalar tail of 8
    {
        struct ggml_tensor * g = rand_t(ctx, "swiglu.gate", 12.0f, 1544, 1, 1);
        struct ggml_tensor * u = rand_t(ctx, "swiglu.up", 3.0f, 1544, 1, 1);
        run(ctx, ggml_swiglu_split(ctx, g, u), "swiglu.out");
    }
    // rms_norm(x, 1e-5) * w, two rows
    {
        struct ggml_tensor * x = rand_t(ctx, "rms.x", 3.0f, 576, 2, 1);
        struct ggml_tensor * w = rand_t(ctx, "rms.w", 1.0f, 576, 1, 1);
        run(ctx, ggml_mul(ctx, ggml_rms_norm(ctx, x, 1e-5f), w), "rms.out");
        // 8 rows dominated by their first value: the f32 rounding of its square (ggml squares in f32, sums in
        // f64) then decides the mean's last bit
        struct ggml_tensor * xd = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 576, 8);
        for (int i = 0; i < 576 * 8; i++) ((float *) xd->data)[i] = i % 576 == 0 ? rnd(40.0f) : rnd(0.01f);
        put_t("rms.xd", xd);
        run(ctx, ggml_mul(ctx, ggml_rms_norm(ctx, xd, 1e-5f), w), "rms.outd");
    }
    // rope_ext mode 0 (normal): head 64, 3 heads, 4 tokens at positions 0, 1, 37, 255; base 100000
    {
        struct ggml_tensor * x = rand_t(ctx, "rope.x", 2.0f, 64, 3, 4);
        struct ggml_tensor * pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 4);
        const int32_t p[4] = { 0, 1, 37, 255 };
        memcpy(pos->data, p, sizeof p);
        run(ctx, ggml_rope_ext(ctx, x, pos, NULL, 64, 0, 8192, 100000.0f, 1.0f, 0.0f, 1.0f, 32.0f, 1.0f), "rope.out");
    }
    // quantized matmuls: 8 rows of 576, times 1 token (vec_dot) and 3 tokens (Q4_1: vec_dot; Q8_0: tinyBLAS)
    {
        struct ggml_tensor * w41 = quant_t(ctx, "q4_1.w", GGML_TYPE_Q4_1, 576, 8, 1);
        struct ggml_tensor * w80 = quant_t(ctx, "q8_0.w", GGML_TYPE_Q8_0, 576, 8, 1);
        struct ggml_tensor * x1 = rand_t(ctx, "mm.x1", 2.0f, 576, 1, 1);
        struct ggml_tensor * x3 = rand_t(ctx, "mm.x3", 2.0f, 576, 3, 1);
        run(ctx, ggml_mul_mat(ctx, w41, x1), "q4_1.out1");
        run(ctx, ggml_mul_mat(ctx, w41, x3), "q4_1.out3");
        run(ctx, ggml_mul_mat(ctx, w80, x1), "q8_0.out1");
        run(ctx, ggml_mul_mat(ctx, w80, x3), "q8_0.out3");
        // 2 tokens whose blocks have max |x| 127 and half-integer values: x * (127 / 127) are exact ties, which
        // the quantizer rounds to even
        struct ggml_tensor * xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 576, 2);
        for (int i = 0; i < 576 * 2; i++) ((float *) xt->data)[i] = i % 32 == 0 ? 127.0f : floorf(rnd(60.0f)) + 0.5f;
        put_t("mm.xt", xt);
        run(ctx, ggml_mul_mat(ctx, w41, xt), "q4_1.outt");
        run(ctx, ggml_mul_mat(ctx, w80, xt), "q8_0.outt");
    }
    // f32 matmuls: 16 rows of 64 times 1 column (vec_dot, n 64); 16 rows of 256 times 1 column (vec_dot, n 256)
    // and times 3 columns (tinyBLAS<16, __m512>)
    {
        struct ggml_tensor * a64 = rand_t(ctx, "f32.a64", 1.0f, 64, 16, 1);
        struct ggml_tensor * b64 = rand_t(ctx, "f32.b64", 1.0f, 64, 1, 1);
        struct ggml_tensor * a256 = rand_t(ctx, "f32.a256", 1.0f, 256, 16, 1);
        struct ggml_tensor * b1 = rand_t(ctx, "f32.b1", 1.0f, 256, 1, 1);
        struct ggml_tensor * b3 = rand_t(ctx, "f32.b3", 1.0f, 256, 3, 1);
        run(ctx, ggml_mul_mat(ctx, a64, b64), "f32.out64");
        run(ctx, ggml_mul_mat(ctx, a256, b1), "f32.out1");
        run(ctx, ggml_mul_mat(ctx, a256, b3), "f32.out3");
        // 16 rows of 80 times 1 column: vec_dot's 64-wide loop plus its scalar tail of 16
        struct ggml_tensor * a80 = rand_t(ctx, "f32.a80", 1.0f, 80, 16, 1);
        struct ggml_tensor * b80 = rand_t(ctx, "f32.b80", 1.0f, 80, 1, 1);
        run(ctx, ggml_mul_mat(ctx, a80, b80), "f32.out80");
    }

    // --- qwen3moe (appended: the records above keep their random inputs) ---
    // rope_ext mode 2 (NeoX): head 64, 4 heads, 5 tokens at positions 0, 1, 2, 37, 255; base 10000
    {
        struct ggml_tensor * x = rand_t(ctx, "ropex.x", 2.0f, 64, 4, 5);
        struct ggml_tensor * pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 5);
        const int32_t p[5] = { 0, 1, 2, 37, 255 };
        memcpy(pos->data, p, sizeof p);
        run(ctx, ggml_rope_ext(ctx, x, pos, NULL, 64, GGML_ROPE_TYPE_NEOX, 512, 10000.0f, 1.0f, 0.0f, 1.0f, 32.0f, 1.0f), "ropex.out");
    }
    // the router of build_moe_ffn (softmax gating, norm_w): 32 experts, 5 tokens, top 4
    {
        struct ggml_tensor * lg = rand_t(ctx, "moe.logits", 4.0f, 32, 5, 1);
        struct ggml_tensor * probs = ggml_soft_max(ctx, lg);
        struct ggml_tensor * sel = ggml_argsort_top_k(ctx, probs, 4);
        struct ggml_tensor * w = ggml_get_rows(ctx, ggml_reshape_3d(ctx, probs, 1, 32, 5), sel);
        w = ggml_reshape_2d(ctx, w, 4, 5);
        struct ggml_tensor * sum = ggml_clamp(ctx, ggml_sum_rows(ctx, w), 6.103515625e-5f, INFINITY);
        struct ggml_tensor * wn = ggml_div(ctx, w, sum);
        struct ggml_cgraph * gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, wn);
        ggml_build_forward_expand(gf, sel);
        if (ggml_graph_compute_with_ctx(ctx, gf, 1) != GGML_STATUS_SUCCESS) { fprintf(stderr, "moe router failed\n"); exit(1); }
        put_t("moe.probs", probs);
        // the view of the argsort: first 4 of each row of 32
        int32_t ids[20];
        for (int t = 0; t < 5; t++) memcpy(ids + 4 * t, (char *) sel->data + t * sel->nb[1], 16);
        put("moe.ids", ids, sizeof ids);
        put_t("moe.weights", wn);
    }
    // mul_mat_id with Q8_0 experts: 8 experts of [32 rows x 256] (up/gate shape) on 3 tokens x top 2, and of
    // [256 rows x 32] (down shape) on their [32, 2, 3] outputs
    {
        struct ggml_tensor * up = quant_t(ctx, "mmid.up", GGML_TYPE_Q8_0, 256, 32, 8);
        struct ggml_tensor * dn = quant_t(ctx, "mmid.down", GGML_TYPE_Q8_0, 32, 256, 8);
        struct ggml_tensor * x = rand_t(ctx, "mmid.x", 2.0f, 256, 1, 3);
        struct ggml_tensor * ids = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, 2, 3);
        const int32_t id[6] = { 5, 1, 1, 7, 0, 5 };
        memcpy(ids->data, id, sizeof id);
        put_t("mmid.ids", ids);
        struct ggml_tensor * h = ggml_mul_mat_id(ctx, up, x, ids);
        run(ctx, h, "mmid.out_up");
        run(ctx, ggml_mul_mat_id(ctx, dn, h, ids), "mmid.out_down");
    }
    // Q6_K mul_mat (not repacked on x86): 16 rows of 512 (two super-blocks) times 1 token (vec_dot_q6_K_q8_K)
    // and 9 tokens (8 or more: the tiled kernels, ggml-cpu/tiled/)
    {
        struct ggml_tensor * w = quant_t(ctx, "q6_k.w", GGML_TYPE_Q6_K, 512, 16, 1);
        struct ggml_tensor * x1 = rand_t(ctx, "q6_k.x1", 2.0f, 512, 1, 1);
        struct ggml_tensor * x9 = rand_t(ctx, "q6_k.x9", 2.0f, 512, 9, 1);
        run(ctx, ggml_mul_mat(ctx, w, x1), "q6_k.out1");
        run(ctx, ggml_mul_mat(ctx, w, x9), "q6_k.out9");
    }
    // Q5_0 experts (mul_mat_id: vec_dot_q5_0_q8_0 per row): 4 experts of [64 rows x 64], 3 tokens x top 2
    {
        struct ggml_tensor * w = quant_t(ctx, "q5_0.w", GGML_TYPE_Q5_0, 64, 64, 4);
        struct ggml_tensor * x = rand_t(ctx, "q5_0.x", 2.0f, 64, 1, 3);
        struct ggml_tensor * ids = ggml_new_tensor_2d(ctx, GGML_TYPE_I32, 2, 3);
        const int32_t id[6] = { 3, 0, 0, 2, 1, 3 };
        memcpy(ids->data, id, sizeof id);
        put_t("q5_0.ids", ids);
        run(ctx, ggml_mul_mat_id(ctx, w, x, ids), "q5_0.out");
    }
    fclose(out);
    ggml_free(ctx);
    return 0;
}
