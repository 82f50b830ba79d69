// tq-gguf: FlashAttention decode instances for K=turbo2, V=f16 (see fattn-vec-turbo.cuh).

#include "../fattn-vec-turbo.cuh"

DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO2, GGML_TYPE_F16);
