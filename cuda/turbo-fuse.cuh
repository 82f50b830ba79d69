// tq-gguf: the turbo caches' randomized Hadamard fused into the nodes next to it (turbo-fuse.cu).
#pragma once

#include "common.cuh"
#include "fattn-turbo-side.cuh"

struct ggml_backend_graph_optimize_params;

bool tq_cuda_fuse_enabled();

// graph_optimize: keep the fused nodes' inputs allocated until the nodes that read them
void tq_cuda_fuse_plan(int device, ggml_cgraph * cgraph, ggml_backend_graph_optimize_params * params);

// graph_compute: call once before the node loop, then for every node; true: the node is done
void tq_cuda_fuse_begin();
bool tq_cuda_fuse_node(ggml_backend_cuda_context & ctx, ggml_cgraph * cgraph, int i);

// fattn.cu: whether the decode kernel chosen for this FLASH_ATTN_EXT can rotate Q and its output
bool ggml_cuda_fattn_turbo_takes_rot(int device, const ggml_tensor * dst);
