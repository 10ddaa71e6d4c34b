// update-diff v1, phase "choose operations" (diff_v1_internal.h): for each
// changed block that is neither ZERO nor COPY (two threads), its cost alone
// (zstd, as REPLACE), then XOR against the closest old bytes "match" found —
// chosen if under 70% of the lone size, and if 48 bytes or less DELTA is not
// even tried — then DELTA against the reference blocks "match" found, chosen
// if under 70% of the lone size and smaller than the XOR.
#include <cstring>

#include "update/diff_v1_internal.h"
#include "util/progress.h"

namespace udm::update::v1gen {

void choose_ops(const Input& in, const OldIndex& ix, Plan& plan) {
  const DiffV1Options& o = in.o;
  const uint8_t* OLD = in.OLD;
  const uint8_t* NEW = in.NEW;
  const uint64_t bs = in.bs;
  const int level = in.level;
  std::vector<GOp>& ops = plan.ops;
  // Similar blocks: for a novel block, the old blocks at its own place and
  // where its COPY neighbours came from (the same file's old version), one
  // block either side; zstd with them as prefix vs alone.
  std::vector<uint32_t> novel;
  for (uint32_t k = 0; k < ops.size(); k++)
    if (ops[k].type == OpType::Replace) novel.push_back(k);
  // The workers change novel ops (type, src) while looking at their
  // neighbours' COPY sources: read those from a copy taken before.
  std::vector<int64_t> copy_src(ops.size(), -1);
  for (uint32_t k = 0; k < ops.size(); k++)
    if (ops[k].type == OpType::Copy) copy_src[k] = static_cast<int64_t>(ops[k].src);
  Progress prog("update-diff: similar blocks", novel.size(), false);
  parallel_for(novel.size(), in.threads, [&](size_t i) {
    GOp& g = ops[novel[i]];
    const uint8_t* nb = NEW + g.dest * bs;
    auto rep = zcompress(nb, bs, nullptr, 0, level, false);
    g.rep_cost = static_cast<uint32_t>(rep.empty() ? bs : rep.size());
    if (!o.delta) return prog.add(1);
    Similar sim = find_similar(in, ix, plan, copy_src, g);
    uint64_t best = xor_source(in, sim, nb);
    if (best != UINT64_MAX) {
      std::vector<uint8_t> pay(nb, nb + bs);
      v1_xor_into(pay, OLD + best);
      auto xc = zcompress(pay.data(), bs, nullptr, 0, 3, false, true);
      uint32_t cost = static_cast<uint32_t>(xc.empty() ? bs : xc.size());
      if (cost < g.rep_cost * kDeltaNum / 10) {
        g.type = OpType::Xor;
        g.src = best;
        g.alt_cost = cost;
        // Clearly good (a few edits): no need to try DELTA as well.
        if (cost <= 48) return prog.add(1);
      }
    }
    std::vector<uint64_t> refs = delta_refs(in, sim, g);
    // Whatever it becomes, a REPLACE block's chunk may use these (and the
    // XOR source) as references (encode picks those still intact).
    auto keep_crefs = [&] {
      if (g.type != OpType::Replace || !o.chunk_refs) return;
      g.crefs = refs;
      if (best != UINT64_MAX) {
        for (uint64_t b : {best / bs, (best + bs - 1) / bs})
          if (b < in.old_blocks && std::find(g.crefs.begin(), g.crefs.end(), b) == g.crefs.end()) g.crefs.push_back(b);
      }
    };
    if (refs.empty()) return keep_crefs(), prog.add(1);
    std::vector<uint8_t> prefix(refs.size() * bs);
    for (size_t k = 0; k < refs.size(); k++) std::memcpy(prefix.data() + k * bs, OLD + refs[k] * bs, bs);
    auto fr = zcompress(nb, bs, prefix.data(), prefix.size(), level, false, true);
    // A REPLACE block also gains from its chunk neighbours: DELTA must win
    // clearly; an XOR found above must be beaten too.
    const uint32_t bar = g.type == OpType::Xor ? g.alt_cost : g.rep_cost * kDeltaNum / 10;
    if (!fr.empty() && fr.size() + 2 * refs.size() < bar) {
      // Reading its own block costs the copy-back a stash write and two
      // flushes: keep the self reference only if it really pays.
      auto self = std::find(refs.begin(), refs.end(), g.dest);
      if (self != refs.end() && refs.size() > 1) {
        std::vector<uint64_t> other(refs.begin(), self);
        other.insert(other.end(), self + 1, refs.end());
        std::vector<uint8_t> p2(other.size() * bs);
        for (size_t k = 0; k < other.size(); k++) std::memcpy(p2.data() + k * bs, OLD + other[k] * bs, bs);
        auto f2 = zcompress(nb, bs, p2.data(), p2.size(), level, false, true);
        if (!f2.empty() && f2.size() <= fr.size() + 16) refs = std::move(other), fr = std::move(f2);
      }
      g.type = OpType::Delta;
      g.refs = std::move(refs);
      g.frame = std::move(fr);
      g.src = 0;
    }
    keep_crefs();
    prog.add(1);
  });
  prog.finish();
}

}  // namespace udm::update::v1gen
