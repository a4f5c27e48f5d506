//! Tensor element types and their block geometry, with GGUF's numeric type ids.

/// An element type of a weight or activation row.
///
/// Block formats store `block_elems()` values in `block_bytes()` bytes; a row of `n` values is `n / block_elems()`
/// consecutive blocks.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// Activation-only: like Q8_0 plus the block sum `s = d * sum(q)` (pairs with Q4_1 and Q5_1).
    Q8_1,
    Q4_K,
    Q5_K,
    Q6_K,
    /// Activation-only: 256 values, f32 scale, i8 quants and 16 partial sums (pairs with the k-quants).
    Q8_K,
    // ---- MLX affine quantization (not GGUF types; not in `ALL`, no ggml id) ----
    // The packed plane of an MLX matrix quantized to 2, 3, 4, 5, 6 or 8 bits: value `i` of a row is bits
    // `bits * i .. bits * (i + 1)` of the row's little-endian bit stream (mlx packs them in uint32 words, or in
    // 3- and 5-byte packs for 3, 5 and 6 bits: the same stream). A block is 8 values in `bits` bytes. The
    // per-group scales and biases are separate planes (see `crate::affine`); the dot kernels take Q8_A
    // activations (or F32 on request).
    MLX_Q2,
    MLX_Q3,
    MLX_Q4,
    MLX_Q5,
    MLX_Q6,
    MLX_Q8,
    /// Activation-only, for the MLX affine types (not a GGUF type, no ggml id): blocks of 32 values as `d * q`
    /// with an f32 scale `d`, i8 quants and their integer sum, stored planar per row (see
    /// [`crate::affine::quantize_q8_a_ref`]). Any group size (32, 64, 128) is a whole number of blocks.
    Q8_A,
}

impl DType {
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q8_1,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_K,
    ];

    /// The MLX affine packed-plane types, by bits: 2, 3, 4, 5, 6, 8.
    pub const MLX: [DType; 6] =
        [DType::MLX_Q2, DType::MLX_Q3, DType::MLX_Q4, DType::MLX_Q5, DType::MLX_Q6, DType::MLX_Q8];

    /// The MLX packed-plane type of `bits` bits per value, if mlx has one.
    pub fn mlx_affine(bits: u32) -> Option<DType> {
        DType::MLX.into_iter().find(|t| t.affine_bits() == Some(bits))
    }

    /// Bits per value of an MLX packed-plane type; `None` for the GGUF types.
    pub fn affine_bits(self) -> Option<u32> {
        Some(match self {
            DType::MLX_Q2 => 2,
            DType::MLX_Q3 => 3,
            DType::MLX_Q4 => 4,
            DType::MLX_Q5 => 5,
            DType::MLX_Q6 => 6,
            DType::MLX_Q8 => 8,
            _ => return None,
        })
    }

    /// The type for a GGUF/ggml type id, or `None` for a type flash-moe does not support.
    pub fn from_ggml(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            9 => DType::Q8_1,
            12 => DType::Q4_K,
            13 => DType::Q5_K,
            14 => DType::Q6_K,
            15 => DType::Q8_K,
            30 => DType::BF16,
            _ => return None,
        })
    }

    /// Position of this type in [`DType::ALL`] (for tables indexed by type); the MLX types come after it and have
    /// no entry in those tables (their kernels are in `crate::affine`).
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The ggml type id of this type.
    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q8_1 => 9,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::Q8_K => 15,
            DType::BF16 => 30,
            DType::MLX_Q2
            | DType::MLX_Q3
            | DType::MLX_Q4
            | DType::MLX_Q5
            | DType::MLX_Q6
            | DType::MLX_Q8
            | DType::Q8_A => {
                panic!("{self:?} is an MLX type: it has no ggml type id")
            }
        }
    }

    /// The name ggml and GGUF tools print for a type id, also for ids flash-moe does not support.
    pub fn ggml_name(id: u32) -> &'static str {
        const NAMES: [&str; 42] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
            "NVFP4",
            "?",
        ];
        NAMES.get(id as usize).copied().unwrap_or("unknown")
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::MLX_Q2 => "MLX_Q2",
            DType::MLX_Q3 => "MLX_Q3",
            DType::MLX_Q4 => "MLX_Q4",
            DType::MLX_Q5 => "MLX_Q5",
            DType::MLX_Q6 => "MLX_Q6",
            DType::MLX_Q8 => "MLX_Q8",
            DType::Q8_A => "Q8_A",
            _ => DType::ggml_name(self.ggml_id()),
        }
    }

    /// Values per block (1 for the float types).
    #[inline]
    pub fn block_elems(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 | DType::Q8_1 | DType::Q8_A => 32,
            DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q8_K => 256,
            DType::MLX_Q2 | DType::MLX_Q3 | DType::MLX_Q4 | DType::MLX_Q5 | DType::MLX_Q6 | DType::MLX_Q8 => 8,
        }
    }

    /// Bytes per block.
    #[inline]
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q8_1 => 36,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
            DType::Q8_K => 292,
            DType::Q8_A => 40,
            DType::MLX_Q2 | DType::MLX_Q3 | DType::MLX_Q4 | DType::MLX_Q5 | DType::MLX_Q6 | DType::MLX_Q8 => {
                self.affine_bits().unwrap_or(8) as usize
            }
        }
    }

    /// Bytes of a row of `n` values, or `None` when `n` is not a whole number of blocks.
    #[inline]
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_elems()) {
            return None;
        }
        (n / self.block_elems()).checked_mul(self.block_bytes())
    }

    /// The type activations are quantized to before a dot product with a row of this type: as llama.cpp for
    /// the block formats, but F32 (not F16/BF16) for the 16-bit float weights, which keeps a bf16 model within
    /// 1e-4 of an f32 reference; [`DType::Q8_A`] for the MLX affine types.
    #[inline]
    pub fn vec_dot_type(self) -> DType {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => DType::F32,
            DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => DType::Q8_0,
            DType::Q4_1 | DType::Q5_1 => DType::Q8_1,
            DType::Q4_K | DType::Q5_K | DType::Q6_K => DType::Q8_K,
            DType::Q8_1 => DType::Q8_1,
            DType::Q8_K => DType::Q8_K,
            DType::MLX_Q2 | DType::MLX_Q3 | DType::MLX_Q4 | DType::MLX_Q5 | DType::MLX_Q6 | DType::MLX_Q8 => {
                DType::Q8_A
            }
            DType::Q8_A => DType::Q8_A,
        }
    }

    /// Whether this type only exists for activations (no weight file stores it).
    pub fn is_activation_only(self) -> bool {
        matches!(self, DType::Q8_1 | DType::Q8_K | DType::Q8_A)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_ids_round_trip() {
        for t in DType::ALL {
            assert_eq!(DType::from_ggml(t.ggml_id()), Some(t));
            assert_eq!(DType::ggml_name(t.ggml_id()), t.name());
        }
        assert_eq!(DType::from_ggml(10), None, "Q2_K is not supported");
        assert_eq!(DType::ggml_name(10), "Q2_K");
    }

    #[test]
    fn row_bytes_needs_whole_blocks() {
        assert_eq!(DType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(DType::Q4_K.row_bytes(64), None);
        assert_eq!(DType::F16.row_bytes(7), Some(14));
    }

    #[test]
    fn mlx_types_pack_8_values_in_bits_bytes() {
        for t in DType::MLX {
            let bits = t.affine_bits().expect("an MLX type");
            assert_eq!(DType::mlx_affine(bits), Some(t));
            assert_eq!(t.row_bytes(64), Some(8 * bits as usize));
            assert!(!DType::ALL.contains(&t) && t.index() >= DType::ALL.len());
            assert_eq!(t.vec_dot_type(), DType::Q8_A);
        }
        assert_eq!(DType::mlx_affine(7), None);
        assert_eq!(DType::Q4_K.affine_bits(), None);
    }
}
