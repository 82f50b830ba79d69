// tq-gguf: FlashAttention decode instances for K=turbo3, V=turbo3 (see fattn-vec-turbo.cuh).

#include "../fattn-vec-turbo.cuh"

DECL_FATTN_VEC_TURBO_CASES(GGML_TYPE_TURBO3, GGML_TYPE_TURBO3);
