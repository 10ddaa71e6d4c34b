// Internal to the v1 generator (make_diff_v1, differ.h): the state its
// phases share and the helpers more than one phase uses. The phases run in
// this order (diff_v1.cpp), each in its own file:
//
//   diff_v1_index.cpp   index old: SHA-256 of both images, which new blocks
//                       changed, old blocks by content hash, content-defined
//                       anchors of the old image
//   diff_v1_match.cpp   match: ZERO and COPY (exact matches), and for the
//                       other changed blocks the old data that resembles
//                       them (XOR source offset, DELTA reference blocks)
//   diff_v1_choose.cpp  choose operations: REPLACE, XOR or DELTA for each of
//                       those blocks, by compressed size
//   diff_v1_order.cpp   order: an apply order that is safe in place (Kahn,
//                       cycles broken by SAVE, zero parking or conversion)
//   diff_v1_encode.cpp  encode: DELTA frames grouped, REPLACE and XOR chunks
//                       compressed, metadata and header
//   diff_v1_write.cpp   write: the loader's check of the result, then the
//                       file in diff_output.h's crash-safe order
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "io/grow_file.h"
#include "update/differ.h"
#include "update/format_v1.h"

namespace udm::update::v1gen {

// f(i) for i in [0, n) on `threads` threads, dynamic batches of 16.
template <class F>
void parallel_for(size_t n, unsigned threads, F f) {
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (;;) {
      size_t b = next.fetch_add(16);
      if (b >= n) return;
      for (size_t i = b; i < std::min(n, b + 16); i++) f(i);
    }
  };
  std::vector<std::thread> ts;
  for (unsigned t = 1; t < threads; t++) ts.emplace_back(work);
  work();
  for (auto& t : ts) t.join();
}

// zstd (one context per thread) with `prefix` as the reference; size_flag
// records the content size, magicless drops the frame magic (DELTA frames).
// Empty on failure.
// window_log 0: zstd's choice for the level and sizes.
std::vector<uint8_t> zcompress(const uint8_t* src, size_t n, const uint8_t* prefix, size_t pn, int level, bool size_flag,
                               bool magicless = false, int window_log = 0);

// Content-defined anchors: a gear hash over the last 64 bytes; positions
// where its top 6 bits are zero (about 1 in 64) are anchors, keyed by the
// hash. (The top bits depend on all 64 bytes; the low bits only on the last
// few, which made text with a small alphabet nearly anchorless.)
struct Gear {
  uint64_t t[256];
  Gear();
};
extern const Gear kGear;
// f(key, position) for up to 48 anchors of p[0, n).
template <class F>
void anchors(const uint8_t* p, size_t n, F f) {
  uint64_t h = 0;
  int found = 0;
  for (size_t i = 0; i < n && found < 48; i++) {
    h = (h << 1) + kGear.t[p[i]];
    if (i >= 63 && (h >> 58) == 0) f(h, i), found++;
  }
}

// A REPLACE block also gains from its chunk neighbours: DELTA must win clearly.
constexpr uint32_t kDeltaNum = 7;  // DELTA if frame + refs < 7/10 of the block alone

// One operation being planned (its final form is a V1Op).
struct GOp {
  uint64_t dest = 0;
  OpType type = OpType::Replace;
  uint64_t src = 0;
  std::vector<uint64_t> refs;  // DELTA
  std::vector<uint64_t> crefs; // REPLACE: old blocks that resemble it (candidates for its chunk's references)
  std::vector<uint8_t> frame;  // DELTA
  uint32_t alt_cost = 0;       // DELTA, XOR: estimated payload bytes
  uint32_t rep_cost = 0;       // standalone compressed size (0 = not computed)
};

// The images and options, fixed for the whole run. OLD and NEW may differ in
// size: destinations are the new image's blocks [0, blocks), sources only the
// old image's [0, old_blocks).
struct Input {
  const DiffV1Options& o;
  const uint8_t* OLD;
  const uint8_t* NEW;
  uint64_t bs, size, old_size, blocks, old_blocks, span;  // span = max(blocks, old_blocks)
  unsigned threads;
  int level;
  std::vector<uint8_t> zero;  // one block of zeroes
  // New blocks [gen_first, gen_end) get no operation: the device regenerates
  // them (a verity hash area, flag VERITY_TREE).
  uint64_t gen_first = 0, gen_end = 0;
  bool generated(uint64_t b) const { return b >= gen_first && b < gen_end; }
};

// Phase "index old".
struct OldIndex {
  std::array<uint8_t, 32> old_sha{}, new_sha{};
  std::vector<uint8_t> changed;  // per new block; every block past the old image's end is "changed"
  // Old blocks by XXH3 of their content, blocks the update leaves alone
  // first; emptied once the exact matches are found.
  std::unordered_map<uint64_t, uint32_t> by_hash;
  // (anchor key, byte position of the anchor's last byte in old), sorted;
  // only with o.delta.
  std::vector<std::pair<uint64_t, uint64_t>> anchors;
};

// Phases "match", "choose" and "order".
struct Plan {
  std::vector<GOp> ops;         // the changed blocks in destination order, then SAVE and parking ZERO ops
  std::vector<int32_t> writer;  // block -> operation writing its final content, -1 if none
  std::vector<uint32_t> order;  // apply order (indices into ops)
};

// Phase "encode": the diff's bytes, in file order.
struct Encoded {
  V1Header h;
  std::array<uint8_t, kV1HeaderSize> header{};
  bool stash = false;                        // a zero stash block follows the header
  std::vector<uint8_t> cmeta;                // compressed metadata
  std::vector<std::vector<uint8_t>> chunks;  // REPLACE chunks, then XOR chunks
  std::vector<std::vector<uint8_t>> frames;  // DELTA frames
  std::vector<uint8_t> verity;               // the VERITY_TREE record (empty without)
  uint64_t file_size() const { return h.data_offset + h.data_size + verity.size(); }
};

// The old block that resembles a changed block, found by "match" for
// "choose": where its content sits in the old image.
struct Similar {
  bool own = false;                                  // bases[0] is its own place in old
  std::vector<uint64_t> bases;                       // old blocks of the same file (own place, COPY neighbours)
  std::vector<std::pair<uint32_t, uint64_t>> votes;  // (anchors shared, old block)
  std::vector<std::pair<uint32_t, uint64_t>> svotes; // (anchors agreeing, byte offset in old of the block's start)
};

void index_old(const Input& in, OldIndex& ix);                                      // diff_v1_index.cpp
void match_exact(const Input& in, OldIndex& ix, Plan& plan, DiffV1Stats& st);       // diff_v1_match.cpp
Similar find_similar(const Input& in, const OldIndex& ix, const Plan& plan, const std::vector<int64_t>& copy_src,
                     const GOp& g);
// The byte offset in old that differs least from the new block nb (at most a
// quarter of its bytes), or UINT64_MAX.
uint64_t xor_source(const Input& in, Similar& s, const uint8_t* nb);
// Reference blocks for a DELTA of g (at most kV1MaxRefs; may be empty).
std::vector<uint64_t> delta_refs(const Input& in, Similar& s, const GOp& g);
void choose_ops(const Input& in, const OldIndex& ix, Plan& plan);                   // diff_v1_choose.cpp
// replace_first: REPLACE operations nobody must read first go first (their
// chunk references stay intact) instead of being held back for parking.
Status order_ops(const Input& in, const OldIndex& ix, Plan& plan, DiffV1Stats& st, bool replace_first);  // diff_v1_order.cpp
Result<Encoded> encode(const Input& in, const OldIndex& ix, Plan& plan, DiffV1Stats& st);  // diff_v1_encode.cpp
Status check_loads(const Encoded& e);                                              // diff_v1_write.cpp
Result<uint64_t> write_encoded(const Encoded& e, GrowFile& out);                    // bytes written

}  // namespace udm::update::v1gen
