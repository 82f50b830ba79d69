// tq-gguf: FlashAttention decode instances for K=f16, V=turbo2 (see fattn-vec-turbo.cuh).

#include "../fattn-vec-turbo.cuh"

DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_F16, GGML_TYPE_TURBO2);
