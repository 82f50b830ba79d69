// tq-gguf: FlashAttention decode instances for K=q8_0, V=turbo2 (see fattn-vec-turbo.cuh).

#include "../fattn-vec-turbo.cuh"

DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_Q8_0, GGML_TYPE_TURBO2);
