// update-diff v1, phase "match" (diff_v1_internal.h): a changed block that
// is all zero is ZERO, one whose content is an old block (hash hit, bytes
// compared) is COPY. For the rest, where similar old data lies: the block's
// own place, the old copy of "the same file" (where its COPY neighbours came
// from) and old blocks sharing content-defined anchors with it; from those,
// the byte offset an XOR would use and the reference blocks of a DELTA.
// "choose" (diff_v1_choose.cpp) decides between them.
#include <xxhash.h>

#include <cstring>

#include "update/diff_v1_internal.h"

namespace udm::update::v1gen {

void match_exact(const Input& in, OldIndex& ix, Plan& plan, DiffV1Stats& st) {
  const uint8_t* OLD = in.OLD;
  const uint8_t* NEW = in.NEW;
  const uint64_t bs = in.bs, blocks = in.blocks;
  const std::vector<uint8_t>& changed = ix.changed;
  const std::vector<uint8_t>& zero = in.zero;
  auto& index = ix.by_hash;
  std::vector<GOp>& ops = plan.ops;
  std::vector<int32_t>& writer = plan.writer;
  writer.assign(in.span, -1);  // operation writing a block (final content), -1 if none
  for (uint64_t d = 0; d < blocks; d++) {
    if (!changed[d]) continue;
    GOp g;
    g.dest = d;
    const uint8_t* nb = NEW + d * bs;
    if (std::memcmp(nb, zero.data(), bs) == 0) {
      g.type = OpType::Zero;
    } else {
      auto it = index.find(XXH3_64bits(nb, bs));
      if (it != index.end() && std::memcmp(OLD + uint64_t{it->second} * bs, nb, bs) == 0) {
        g.type = OpType::Copy;
        g.src = it->second;
      }
    }
    writer[d] = static_cast<int32_t>(ops.size());
    ops.push_back(std::move(g));
  }
  st.changed_blocks = ops.size();
  index.clear();
}

Similar find_similar(const Input& in, const OldIndex& ix, const Plan& plan, const std::vector<int64_t>& copy_src,
                     const GOp& g) {
  const DiffV1Options& o = in.o;
  const uint64_t bs = in.bs, blocks = in.blocks, old_blocks = in.old_blocks;
  const std::vector<int32_t>& writer = plan.writer;
  const auto& aidx = ix.anchors;
  const uint8_t* nb = in.NEW + g.dest * bs;
  Similar s;
  // bases[0] is the block's own place in old (if the old image has it).
  const bool own = s.own = g.dest < old_blocks;
  std::vector<uint64_t>& bases = s.bases;
  if (own) bases.push_back(g.dest);
  const int64_t W = o.neighbourhood;
  for (int64_t dist = 1; dist <= W && bases.size() < 4; dist++) {
    for (int64_t sgn : {-1, 1}) {
      int64_t n = static_cast<int64_t>(g.dest) + sgn * dist;
      if (n < 0 || n >= static_cast<int64_t>(blocks)) continue;
      int32_t w = writer[n];
      if (w < 0 || copy_src[w] < 0) continue;
      int64_t base = copy_src[w] - sgn * dist;
      if (base < 0 || base >= static_cast<int64_t>(old_blocks)) continue;
      if (std::find(bases.begin(), bases.end(), uint64_t(base)) == bases.end()) bases.push_back(uint64_t(base));
    }
  }
  // Old blocks sharing anchors with this one. Anchors found in more
  // than 8 old blocks (repeated content) are skipped, unless no anchor is
  // rarer: then they vote for the first 8 of their blocks (consistent
  // across the block's anchors, so a shifted copy still wins).
  auto& votes = s.votes;    // (count, block)
  auto& svotes = s.svotes;  // (count, byte offset in old of this block's start)
  for (int pass = 0; pass < 2 && votes.empty(); pass++) {
    anchors(nb, bs, [&](uint64_t key, size_t at) {
      auto lo = std::lower_bound(aidx.begin(), aidx.end(), std::pair<uint64_t, uint64_t>{key, 0});
      auto hi = lo;
      while (hi != aidx.end() && hi->first == key && hi - lo <= 8) ++hi;
      if (lo == hi) return;
      if (hi - lo > 8) {
        if (pass == 0) return;
        hi = lo + 8;
      }
      for (auto it = lo; it != hi; ++it) {
        uint64_t ob = it->second / bs;
        auto v = std::find_if(votes.begin(), votes.end(), [&](auto& x) { return x.second == ob; });
        if (v == votes.end()) votes.push_back({1, ob});
        else v->first++;
        if (it->second < at) continue;
        uint64_t sh = it->second - at;
        auto w = std::find_if(svotes.begin(), svotes.end(), [&](auto& x) { return x.second == sh; });
        if (w == svotes.end()) svotes.push_back({1, sh});
        else w->first++;
      }
    });
  }
  return s;
}

// XOR: the old bytes at one offset that differ least from this block
// (the offsets anchors agree on, its own place, where COPY neighbours
// put its old copy). Sparse edits leave a payload of mostly zeroes.
uint64_t xor_source(const Input& in, Similar& s, const uint8_t* nb) {
  const uint64_t bs = in.bs, old_size = in.old_size;
  auto& svotes = s.svotes;
  std::sort(svotes.begin(), svotes.end(), std::greater<>());
  std::vector<uint64_t> cand;
  for (size_t k = 0; k < svotes.size() && k < 3; k++)
    if (svotes[k].first >= 2) cand.push_back(svotes[k].second);
  for (uint64_t b : s.bases) cand.push_back(b * bs);
  uint64_t best = UINT64_MAX;
  size_t best_diff = bs / 4 + 1;  // more differing bytes than this: not an XOR block
  for (uint64_t c : cand) {
    if (c > old_size - bs) continue;
    size_t diff = 0;
    const uint8_t* ob = in.OLD + c;
    for (size_t k = 0; k < bs && diff < best_diff; k++) diff += ob[k] != nb[k];
    if (diff < best_diff) best_diff = diff, best = c;
  }
  return best;
}

// DELTA: the old blocks most anchors point at, then the same-file bases
// with a block either side.
std::vector<uint64_t> delta_refs(const Input& in, Similar& s, const GOp& g) {
  const uint64_t bs = in.bs, old_blocks = in.old_blocks;
  const auto& bases = s.bases;
  auto& votes = s.votes;
  std::sort(votes.begin(), votes.end(), std::greater<>());
  std::vector<uint64_t> refs;
  for (size_t vi = 0; vi < votes.size() && vi < in.o.anchor_blocks; vi++)
    if (votes[vi].first >= 2 && std::find(bases.begin(), bases.end(), votes[vi].second) == bases.end())
      refs.push_back(votes[vi].second);
  std::reverse(refs.begin(), refs.end());
  // Farthest candidates first: the prefix's end (closest offsets) gets the best guess.
  for (size_t bi = bases.size(); bi-- > 0;) {
    for (int64_t dlt : {-1, 0, 1}) {
      // Around its own place only the block itself: its neighbours are
      // usually rewritten too and would tie the two into a cycle.
      if (s.own && bi == 0 && dlt != 0) continue;
      int64_t r = static_cast<int64_t>(bases[bi]) + dlt;
      if (r < 0 || r >= static_cast<int64_t>(old_blocks)) continue;
      if (std::memcmp(in.OLD + uint64_t(r) * bs, in.zero.data(), bs) == 0) continue;
      if (std::find(refs.begin(), refs.end(), uint64_t(r)) == refs.end()) refs.push_back(uint64_t(r));
    }
  }
  if (refs.size() > kV1MaxRefs) refs.erase(refs.begin(), refs.end() - kV1MaxRefs);
  return refs;
}

}  // namespace udm::update::v1gen
