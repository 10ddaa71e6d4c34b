// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payloads: parsed or
// refused (EINVAL or E2BIG) with a message, never read out of bounds; what is
// accepted re-encodes to exactly the input, respects the size limits, and the
// contexts it selects are known ones without duplicates. Block status chunks
// built from input-derived maps have the length their header says.
#include <cstdint>
#include <cstdlib>
#include <set>

#include "export/nbd/nbd_proto.h"

using namespace udm::nbd;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = parse_meta_context_request(std::span<const uint8_t>(data, size));
  if (!r.ok()) {
    if (r.status().message().empty()) std::abort();
    if (r.status().code() != EINVAL && r.status().code() != E2BIG) std::abort();
  } else {
    size_t total = 8 + r->name.size();
    if (r->name.size() > kMaxMetaQuery || r->queries.size() > kMaxMetaQueries) std::abort();
    for (const auto& q : r->queries) {
      if (q.size() > kMaxMetaQuery) std::abort();
      total += 4 + q.size();
    }
    if (total != size) std::abort();
    for (bool list : {false, true}) {
      auto ids = select_meta_contexts(r->queries, list);
      std::set<uint32_t> seen;
      for (uint32_t id : ids) {
        if (std::string(meta_context_name(id)).empty() || !seen.insert(id).second) std::abort();
        if (!list) {
          bool named = false;  // SET selects exact names only
          for (const auto& q : r->queries) named |= q == meta_context_name(id);
          if (!named) std::abort();
        }
      }
    }
  }
  // An allocation map from the bytes: (length, kind, depth) triples.
  udm::AllocMap m;
  for (size_t i = 0; i + 4 <= size && m.size() < 64; i += 4) {
    udm::AllocRun run;
    run.length = get_be16(data + i) + 1;
    run.kind = static_cast<udm::AllocKind>(data[i + 2] % 3);
    run.depth = data[i + 3] % 4;
    m.push_back(run);
  }
  if (!m.empty()) {
    for (uint32_t id : {kMetaBaseAllocation, kMetaQemuAllocationDepth}) {
      auto c = block_status_chunk(1, true, id, m, size % 2);
      if (c.size() < 24 || get_be32(c.data() + 16) != c.size() - 20 || (c.size() - 24) % 8) std::abort();
      uint64_t sum = 0, want = 0;
      for (size_t k = 24; k < c.size(); k += 8) {
        if (get_be32(c.data() + k) == 0) std::abort();
        sum += get_be32(c.data() + k);
      }
      for (auto& run : m) want += run.length;
      if (sum > want || (!(size % 2) && sum != want)) std::abort();
    }
  }
  return 0;
}
