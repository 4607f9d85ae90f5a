// Size limits of the kernels (fixed-size register or shared-memory arrays). Python reads them from the compiled
// module (imtok_cuda._C.limits) instead of restating them.
#pragma once

#include <cstdint>

namespace imtok {

constexpr int64_t kMaxTopK = 128;            // vq_nearest_topk: k (a sorted list per row in registers)
constexpr int64_t kMaxHeadDim = 128;         // attention: head dim d (a row of d channels per tile)
constexpr int64_t kMaxGraphNeighbours = 32;  // prune_gtp_graph: num_neighbours of the semantic graph
constexpr int64_t kMaxDraftWindow = 64;      // sampling_gsd_verify: window (candidate lists in shared memory)
constexpr int64_t kFsqMaxDims = 32;          // vq_fsq: len(levels) (per-dimension parameters passed by value)

}  // namespace imtok
