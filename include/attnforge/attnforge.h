/*
 * attnforge: FlashAttention-compatible attention behind a plain C ABI.
 *
 * This header is the only public interface of libattnforge.so. It compiles as
 * C99 and as C++; every type that crosses it has a fixed width; argument
 * structs carry their own size so that old callers keep working when fields
 * are appended; no C++ type or exception ever crosses it.
 *
 * Layout and semantics follow FlashAttention-2 exactly:
 *   q (B, Sq, H, D), k/v (B, Sk, Hk, D), out like q, softmax_lse fp32 (B, H, Sq);
 *   variable-length batches: q (total_q, H, D), k/v (total_k, Hk, D),
 *   softmax_lse (H, total_q); GQA/MQA by contiguous head groups (H % Hk == 0);
 *   causal masks aligned bottom-right; windows (left, right) inclusive, -1 is
 *   unbounded; rows that attend to nothing give 0 and lse = -inf.
 */
#ifndef ATTNFORGE_ATTNFORGE_H
#define ATTNFORGE_ATTNFORGE_H

#include <stddef.h>
#include <stdint.h>

#if defined(AF_BUILDING_LIBRARY)
#define AF_API __attribute__((visibility("default")))
#else
#define AF_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Versions ----------------------------------------------------------- */

#define AF_VERSION_MAJOR 0
#define AF_VERSION_MINOR 1
#define AF_VERSION_PATCH 0
#define AF_VERSION_NUMBER (AF_VERSION_MAJOR * 10000 + AF_VERSION_MINOR * 100 + AF_VERSION_PATCH)
#define AF_VERSION_STRING "0.1.0"

/* Bumped only when a released struct or function changes incompatibly. */
#define AF_ABI_VERSION 1

AF_API int af_version_number(void); /* AF_VERSION_NUMBER of the loaded library */
AF_API const char* af_version_string(void);
AF_API int af_abi_version(void);
/* Compiler, flags and build type the library was built with (static string). */
AF_API const char* af_build_info(void);

/* ---- Status ------------------------------------------------------------- */

/* Values are pinned: never renumber, only append. */
typedef enum af_status {
  AF_OK = 0,
  AF_ERR_INVALID_ARGUMENT = 1,     /* a scalar argument out of range */
  AF_ERR_NULL_POINTER = 2,         /* a required pointer is NULL */
  AF_ERR_SHAPE = 3,                /* rank or shape mismatch between tensors */
  AF_ERR_STRIDE = 4,               /* non-unit last-dim stride, negative stride, ... */
  AF_ERR_DTYPE = 5,                /* unsupported or mixed dtypes */
  AF_ERR_DEVICE = 6,               /* tensors on different or unknown devices */
  AF_ERR_SEQLENS = 7,              /* cu_seqlens / seqused / max_seqlen inconsistent */
  AF_ERR_OVERFLOW = 8,             /* a size or offset product does not fit in int64 */
  AF_ERR_STRUCT_SIZE = 9,          /* struct_size smaller than any known version */
  AF_ERR_UNSUPPORTED = 10,         /* valid call that no allowed backend can run */
  AF_ERR_BACKEND_UNAVAILABLE = 11, /* the requested backend cannot run on this machine */
  AF_ERR_OUT_OF_MEMORY = 12,
  AF_ERR_CUDA = 13,             /* a CUDA driver call failed */
  AF_ERR_COMPILE = 14,          /* NVRTC failed to compile a kernel */
  AF_ERR_IO = 15,               /* file system error (kernel cache) */
  AF_ERR_BUFFER_TOO_SMALL = 16, /* output text truncated; see the *_needed argument */
  AF_ERR_INTERNAL = 17
} af_status;

/* A static, constant name for a status ("AF_ERR_SHAPE"); never NULL. */
AF_API const char* af_status_string(af_status status);

/* The detailed message of the last failure on the calling thread ("" if none,
 * and "" after a call that returned AF_OK). Valid until the next attnforge call
 * on the same thread. */
AF_API const char* af_last_error_message(void);

/* ---- Tensors ------------------------------------------------------------ */

/* dtype codes */
typedef enum af_dtype {
  AF_DTYPE_FLOAT32 = 0,
  AF_DTYPE_FLOAT16 = 1,
  AF_DTYPE_BFLOAT16 = 2,
  AF_DTYPE_INT32 = 3,
  AF_DTYPE_FLOAT64 = 4
} af_dtype;

/* Device types use DLPack's DLDeviceType values. */
typedef enum af_device_type { AF_DEVICE_CPU = 1, AF_DEVICE_CUDA = 2 } af_device_type;

#define AF_MAX_RANK 6

/* A strided view, with DLPack DLTensor meanings: data points at element 0
 * (any byte_offset already applied); strides are in elements, not bytes. */
typedef struct af_tensor {
  void* data;
  int32_t dtype;       /* af_dtype */
  int32_t device_type; /* af_device_type */
  int32_t device_index;
  int32_t rank; /* 0..AF_MAX_RANK */
  int64_t shape[AF_MAX_RANK];
  int64_t strides[AF_MAX_RANK];
} af_tensor;

/* ---- Attention forward -------------------------------------------------- */

typedef enum af_backend {
  AF_BACKEND_AUTO = 0, /* CUDA when the tensors are on a GPU and it supports the call, else CPU */
  AF_BACKEND_CPU = 1,
  AF_BACKEND_CUDA = 2
} af_backend;

/* The argument struct (version 2). Set struct_size = sizeof(af_attention_args);
 * zero-initialise, then fill what you use. Optional tensors are NULL when absent.
 *
 * Padded batch:    q (B, Sq, H, D)       k, v (B, Sk, Hk, D)    lse (B, H, Sq)
 * Varlen batch:    q (total_q, H, D)     k, v (total_k, Hk, D)  lse (H, total_q)
 *                  with cu_seqlens_q / cu_seqlens_k int32 (B + 1), non-decreasing,
 *                  starting at 0 (as FlashAttention), max_seqlen_* >= every length.
 * Paged KV:        k, v (num_blocks, page_size, Hk, D) and block_table int32
 *                  (B, max_blocks_per_seq); any page_size >= 1. Sequence b's
 *                  key j lives in page block_table[b][j / page_size], row j % page_size.
 */
typedef struct af_attention_args {
  uint32_t struct_size;

  const af_tensor* q;
  const af_tensor* k;
  const af_tensor* v;
  const af_tensor* out;         /* written; same shape as q, dtype of q */
  const af_tensor* softmax_lse; /* optional, written, float32 natural-log LSE */

  const af_tensor* cu_seqlens_q; /* optional int32 (B + 1): varlen queries */
  const af_tensor* cu_seqlens_k; /* optional int32 (B + 1): varlen keys (needs cu_seqlens_q) */
  int64_t max_seqlen_q;          /* varlen only */
  int64_t max_seqlen_k;          /* varlen only */
  const af_tensor* seqused_k;    /* optional int32 (B): keys actually used per sequence */
  const af_tensor* leftpad_k;    /* optional int32 (B): keys start at this row (kv cache left padding) */
  const af_tensor* block_table;  /* optional int32 (B, max_blocks): paged KV */
  const af_tensor* kv_batch_idx; /* optional int32 (B): batch b reads k/v batch kv_batch_idx[b] */
  const af_tensor* alibi_slopes; /* optional float32 (H) or (B, H) */

  float softmax_scale;  /* 0 means 1 / sqrt(D) */
  float softcap;        /* > 0: scores become softcap * tanh(scores / softcap) */
  int32_t causal;       /* nonzero: bottom-right causal (forces window_right = 0) */
  int32_t window_left;  /* -1: unbounded */
  int32_t window_right; /* -1: unbounded */

  int32_t backend;   /* af_backend */
  void* cuda_stream; /* CUstream / cudaStream_t; NULL = legacy default stream */

  /* ---- Version 2 (struct_size >= offsetof(num_splits) + 4); older callers get 0. */
  int32_t num_splits; /* FlashAttention's num_splits: 0 heuristic, 1 no split,
                         N in 2..256 forced (CUDA; results then do not depend on
                         the batch's composition) */
} af_attention_args;

/* Runs attention. On failure nothing has been written past the checks, and
 * af_last_error_message() says exactly what was wrong. Blocking on the CPU
 * backend; asynchronous on the caller's stream on the CUDA backend. */
AF_API af_status af_attention_forward(const af_attention_args* args);

/* Answers, from the same selector that af_attention_forward dispatches with,
 * whether the call would run. On AF_OK, *selected (if not NULL) is the backend
 * that would run it. Otherwise the status is the one forward would return and
 * af_last_error_message() says why. Reads no tensor data on the GPU. */
AF_API af_status af_attention_supported(const af_attention_args* args, af_backend* selected);

/* ---- Plan / run ---------------------------------------------------------- */

/* A plan holds what one call shape needs decided once: the backend, the kernel (family,
 * variant, architecture, tile, grid, key splits) and the workspace size. Create it once per
 * shape, run it many times (a decode loop, a CUDA graph). Opaque; free with
 * af_attention_plan_destroy. */
typedef struct af_attention_plan af_attention_plan;

/* Makes a plan from args as af_attention_forward takes them, but only shapes, strides, dtypes,
 * devices and flags are read: data pointers may be NULL. On failure *plan is NULL and the status
 * is the one af_attention_forward would return. On the CUDA backend this compiles (or loads from
 * the cache) the kernel. */
AF_API af_status af_attention_plan_create(const af_attention_args* args, af_attention_plan** plan);

/* Bytes of device memory a caller-owned workspace for af_attention_run needs (0: none). */
AF_API af_status af_attention_plan_workspace_size(const af_attention_plan* plan, size_t* bytes);

/* Which kernel the plan runs, as text ("cuda decode bf16 d128 sm_90a 16x64 splits=8", "cpu");
 * same buffer contract as af_runtime_report. */
AF_API af_status af_attention_plan_describe(const af_attention_plan* plan, char* buffer, size_t capacity,
                                            size_t* needed);

/* Runs args with a plan made for the same shapes, dtypes, devices and flags; anything else is
 * AF_ERR_INVALID_ARGUMENT with the differing field named, never a wrong answer. workspace: device
 * memory of at least af_attention_plan_workspace_size bytes on the tensors' device, stream-ordered
 * with cuda_stream; its contents need not be initialised (the run first zeroes, on cuda_stream, the
 * part that must start at zero). NULL: attnforge's own workspace of cuda_stream, one per stream,
 * kept while the library is loaded (a CUDA graph captured with it keeps using it, so such graphs
 * must not replay concurrently with each other or with that stream's other calls; give those a
 * workspace each). Validation is that of af_attention_forward. */
AF_API af_status af_attention_run(const af_attention_plan* plan, const af_attention_args* args, void* workspace,
                                  size_t workspace_bytes);

/* Frees a plan; NULL is ignored. */
AF_API void af_attention_plan_destroy(af_attention_plan* plan);

/* ---- KV-cache append with rotary embedding ------------------------------ */

/* flash_attn_with_kvcache's steps before its attention (FlashAttention-2 semantics), on the GPU
 * in one kernel on cuda_stream: the new k rows rotated (when rotary_cos is given) and written with
 * the new v rows into the cache at rows cache_seqlens[b] + t; q rotated into q_out at
 * cache_seqlens[b] + t when q_positions_per_row (causal or local attention), else all at
 * cache_seqlens[b]. The attention that follows reads cache_seqlens[b] + S_new rows.
 * CUDA tensors only (AF_ERR_UNSUPPORTED otherwise: the Python package then appends with torch).
 * Shapes, dtypes and strides are checked before anything is written; index contents live on the
 * GPU and are not read on the host: a row whose destination falls outside the cache (or whose
 * position falls outside cos/sin) is not written, and q positions are clamped into cos/sin. */
typedef struct af_kvcache_append_args {
  uint32_t struct_size;           /* sizeof(af_kvcache_append_args) */
  const af_tensor* k_cache;       /* written: 16-bit (B_cache, S_cache, Hk, D) or paged (num_pages, page_size, Hk, D) */
  const af_tensor* v_cache;       /* written: like k_cache */
  const af_tensor* k;             /* optional (B, S_new, Hk, D), dtype of the cache; with v */
  const af_tensor* v;             /* optional, like k */
  const af_tensor* cache_seqlens; /* int32 (B): rows already in the cache */
  const af_tensor* cache_batch_idx; /* optional int32 (B): cache batch of sequence b (padded caches) */
  const af_tensor* block_table;     /* optional int32 (B, max_blocks): paged caches */
  const af_tensor* rotary_cos;      /* optional (seqlen_ro, rotary_dim / 2), dtype of the cache */
  const af_tensor* rotary_sin;      /* like rotary_cos; both or neither */
  const af_tensor* q;               /* optional (B, Sq, H, D) to rotate (needs rotary_cos) */
  const af_tensor* q_out;           /* (B, Sq, H, D) like q, written; may be q itself */
  const af_tensor* seqused_out;     /* optional int32 (B), written: cache_seqlens[b] + S_new, the keys the
                                       attention then reads (its seqused_k), with no separate kernel */
  int32_t rotary_interleaved;       /* nonzero: pairs (2i, 2i + 1); zero: GPT-NeoX halves (i, i + rotary_dim / 2) */
  int32_t q_positions_per_row;
  void* cuda_stream;
} af_kvcache_append_args;

AF_API af_status af_kvcache_append(const af_kvcache_append_args* args);

/* ---- Runtime, backends, threads ---------------------------------------- */

/* AF_OK if the backend can run on this machine; otherwise
 * AF_ERR_BACKEND_UNAVAILABLE and af_last_error_message() says why. */
AF_API af_status af_backend_available(af_backend backend);

/* A JSON object describing the library, its build and every backend, with each
 * probing step and why a step failed. Writes at most capacity bytes including
 * the terminating NUL; *needed (if not NULL) gets the full size including it.
 * Returns AF_ERR_BUFFER_TOO_SMALL when truncated. */
AF_API af_status af_runtime_report(char* buffer, size_t capacity, size_t* needed);

/* Worker threads of the CPU backend (default: hardware concurrency, or
 * $ATTNFORGE_NUM_THREADS), at most 1024: a larger n is AF_ERR_INVALID_ARGUMENT.
 * n < 1 restores the default. A fork()ed child gets a pool of its own. */
AF_API af_status af_set_num_threads(int32_t n);
AF_API int32_t af_get_num_threads(void);

/* Extra directories (':'-separated) searched for libnvrtc before CUDA_HOME,
 * the conda prefix and the loader's cache; $ATTNFORGE_NVRTC (a file) comes
 * first. The Python package passes the NVRTC of torch's nvidia wheels here.
 * Must be called before the CUDA backend is first used to take effect. */
AF_API af_status af_set_nvrtc_search_path(const char* directories);

/* ---- Kernel cache and ahead-of-time compilation ------------------------ */

typedef void (*af_progress_callback)(void* user_data, int32_t done, int32_t total, const char* item);

/* Compiles the common kernel variants into the cache for each architecture
 * ("sm_80", "sm_86", "sm_90a", "compute_90" or "90"; anything else is
 * AF_ERR_INVALID_ARGUMENT); archs == NULL or n_archs == 0 means the GPUs of
 * this machine. Needs NVRTC, not a GPU. progress may be NULL. AF_ERR_IO when
 * the cache cannot hold the kernels (the directory is refused, see below, or
 * not writable): AF_OK means every kernel is in the cache. */
AF_API af_status af_warmup(const char* const* archs, int32_t n_archs, af_progress_callback progress, void* user_data);

/* The cache directory ($ATTNFORGE_CACHE_DIR, which must be absolute,
 * $XDG_CACHE_HOME/attnforge or ~/.cache/attnforge), as text; same buffer
 * contract as af_runtime_report. The directory is used only when it is a real
 * directory (not a symbolic link) owned by the effective user and not
 * writable by group or others; otherwise kernels are compiled in memory and
 * af_runtime_report's "kernel_cache" says why. */
AF_API af_status af_cache_dir(char* buffer, size_t capacity, size_t* needed);

/* A JSON array of cache entries {file, size, label, valid, and problem when
 * not valid}; same buffer contract. "[]" when the directory does not exist;
 * AF_ERR_IO when it cannot be read or is refused. */
AF_API af_status af_cache_list(char* buffer, size_t capacity, size_t* needed);

/* Removes every cache entry attnforge wrote; nothing else. AF_OK when the
 * directory does not exist; AF_ERR_IO when it is refused or an entry stays. */
AF_API af_status af_cache_clear(void);

#ifdef __cplusplus
}
#endif

#endif /* ATTNFORGE_ATTNFORGE_H */
