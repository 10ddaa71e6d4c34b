// update-diff v1, phase "order" (diff_v1_internal.h): an apply order that is
// safe in place. An edge A -> B when A reads an old block that B overwrites;
// Kahn's algorithm, lowest destination first, operations whose destination
// was read since the last (simulated) checkpoint held back to save copy-back
// barriers. When it is stuck, Tarjan's algorithm finds the cycles and in each
// the operation cheapest to change is changed: a COPY keeps its content
// through a SAVE that parks its source in a held-back REPLACE/ZERO block or
// in free zero space, else a DELTA drops the references inside the cycle,
// else it becomes REPLACE (docs/update-format.md, "Generator" step 4).
#include <algorithm>
#include <cstring>
#include <queue>

#include "update/diff_v1_internal.h"

namespace udm::update::v1gen {

Status order_ops(const Input& in, const OldIndex& ix, Plan& plan, DiffV1Stats& st, bool replace_first) {
  const DiffV1Options& o = in.o;
  const uint8_t* OLD = in.OLD;
  const uint8_t* NEW = in.NEW;
  const uint64_t bs = in.bs, blocks = in.blocks, old_blocks = in.old_blocks, span = in.span;
  const int level = in.level;
  const std::vector<uint8_t>& zero = in.zero;
  const std::vector<uint8_t>& changed = ix.changed;
  std::vector<GOp>& ops = plan.ops;
  std::vector<int32_t>& writer = plan.writer;
  std::vector<uint32_t>& order = plan.order;
  // Op A before op B when A reads the old block B overwrites. Kahn's
  // algorithm (lowest destination first); when stuck, every cycle (strongly
  // connected component) loses its cheapest reader: SAVE, a trimmed DELTA or
  // REPLACE.
  const size_t n = ops.size();
  std::vector<std::vector<uint32_t>> succ(n);
  std::vector<uint32_t> indeg(n, 0);
  auto add_reads = [&](uint32_t k) {
    auto edge = [&](uint64_t b) {
      int32_t w = writer[b];
      if (w >= 0 && static_cast<uint32_t>(w) != k) {
        succ[k].push_back(static_cast<uint32_t>(w));
        indeg[w]++;
      }
    };
    if (ops[k].type == OpType::Copy) edge(ops[k].src);
    if (ops[k].type == OpType::Delta)
      for (uint64_t r : ops[k].refs) edge(r);
    if (ops[k].type == OpType::Xor) {
      edge(ops[k].src / bs);
      if ((ops[k].src + bs - 1) / bs != ops[k].src / bs) edge((ops[k].src + bs - 1) / bs);
    }
  };
  for (uint32_t k = 0; k < n; k++) add_reads(k);
  order.reserve(n);
  std::vector<uint8_t> emitted(n, 0);
  // Lowest destination first; with chunk references REPLACE operations
  // before the rest (their chunk's references are then still intact).
  const bool early = replace_first;
  auto later = [&](uint32_t a, uint32_t b) {
    if (early) {
      const bool ra = ops[a].type == OpType::Replace, rb = ops[b].type == OpType::Replace;
      if (ra != rb) return rb;
    }
    return a > b;
  };
  std::priority_queue<uint32_t, std::vector<uint32_t>, decltype(later)> ready(later);
  // REPLACE/ZERO operations whose old block nobody reads are held back to
  // the end: they can host a block saved to break a COPY cycle (SAVE).
  std::vector<uint8_t> withheld(n, 0);
  std::vector<uint32_t> pool;
  // REPLACE operations that nobody has to read first and whose chunk may
  // use old blocks as references go first, in destination order: their
  // references are then still intact when their chunk is decoded.
  for (uint32_t k = 0; k < n; k++) {
    if (!early || indeg[k] || ops[k].type != OpType::Replace) continue;
    emitted[k] = 1;
    order.push_back(k);
  }
  // So are operations that read only blocks no operation writes (a COPY,
  // DELTA or XOR from unchanged old blocks): whenever they run, what they
  // read is intact. Held back, their blocks are the copy-back's supply of
  // scratch blocks for logged batches (format_v1.h, V1ScratchPlanner): the
  // more there are, the longer each batch and the fewer its flushes.
  auto reads_only_unchanged = [&](uint32_t k) {
    auto unchanged = [&](uint64_t b) { return b >= span || writer[b] < 0; };
    const GOp& g = ops[k];
    if (g.type == OpType::Copy) return unchanged(g.src);
    if (g.type == OpType::Delta) return std::all_of(g.refs.begin(), g.refs.end(), unchanged);
    if (g.type == OpType::Xor) return unchanged(g.src / bs) && unchanged((g.src + bs - 1) / bs);
    return false;
  };
  for (uint32_t k = 0; k < n; k++) {
    if (indeg[k] || emitted[k]) continue;
    if (ops[k].type == OpType::Replace || ops[k].type == OpType::Zero || reads_only_unchanged(k)) {
      withheld[k] = 1;
      pool.push_back(k);
    } else {
      ready.push(k);
    }
  }
  std::vector<uint32_t> pool_all = pool;
  // More parking places: a block that is all zero in both images (free
  // space of the filesystem) has no operation and nobody reads it. A SAVE
  // may park a block there if a ZERO operation, held back like the pool's,
  // puts the zeroes back at the end. Taken from the end of the image first.
  std::vector<uint64_t> spare_zero;
  if (o.zero_parking) {
    std::vector<uint8_t> read(span, 0);  // a block somebody reads is no parking place
    for (const GOp& g : ops) {
      if (g.type == OpType::Copy) read[g.src] = 1;
      for (uint64_t r : g.refs) read[r] = 1;
      if (g.type == OpType::Xor) read[g.src / bs] = read[(g.src + bs - 1) / bs] = 1;
    }
    // Only blocks both images have (an unchanged block lies in both).
    for (uint64_t b = std::min(blocks, old_blocks); b-- > 0;)
      if (!changed[b] && !read[b] && !in.generated(b) && std::memcmp(OLD + b * bs, zero.data(), bs) == 0) spare_zero.push_back(b);
  }
  std::reverse(spare_zero.begin(), spare_zero.end());
  bool released = false;
  auto cost = [&](uint32_t k) -> int64_t {
    GOp& g = ops[k];
    if (!g.rep_cost) {
      auto c = zcompress(NEW + g.dest * bs, bs, nullptr, 0, 3, false);
      g.rep_cost = static_cast<uint32_t>(c.empty() ? bs : c.size());
    }
    if (g.type == OpType::Xor) return int64_t(g.rep_cost) - int64_t(g.alt_cost);
    return g.type == OpType::Delta ? int64_t(g.rep_cost) - int64_t(g.frame.size()) : int64_t(g.rep_cost);
  };
  std::vector<int32_t> comp_of(n, -1);
  auto convert = [&](uint32_t k, int32_t cid) {
    GOp& g = ops[k];
    if (g.type == OpType::Delta) {
      // First try dropping only the references inside this cycle.
      std::vector<uint64_t> keep;
      for (uint64_t r : g.refs)
        if (writer[r] < 0 || static_cast<uint32_t>(writer[r]) == k || comp_of[writer[r]] != cid) keep.push_back(r);
      if (!keep.empty() && keep.size() < g.refs.size()) {
        std::vector<uint8_t> prefix(keep.size() * bs);
        for (size_t i = 0; i < keep.size(); i++) std::memcpy(prefix.data() + i * bs, OLD + keep[i] * bs, bs);
        auto fr = zcompress(NEW + g.dest * bs, bs, prefix.data(), prefix.size(), level, false, true);
        if (!fr.empty() && fr.size() + 2 * keep.size() < g.rep_cost * kDeltaNum / 10) {
          std::vector<uint32_t> rest;
          for (uint32_t w : succ[k]) {
            if (comp_of[w] == cid) {
              if (!emitted[w] && --indeg[w] == 0) ready.push(w);
            } else {
              rest.push_back(w);
            }
          }
          succ[k] = std::move(rest);
          g.refs = std::move(keep);
          g.frame = std::move(fr);
          st.trimmed++;
          return;
        }
      }
    }
    for (uint32_t w : succ[k])
      if (!emitted[w] && --indeg[w] == 0) ready.push(w);
    succ[k].clear();
    // What it read may still serve its chunk as references if intact there.
    if (o.chunk_refs) {
      if (g.type == OpType::Delta) g.crefs = g.refs;
      if (g.type == OpType::Copy && g.src < old_blocks) g.crefs = {g.src};
      if (g.type == OpType::Xor) g.crefs = {g.src / bs, (g.src + bs - 1) / bs};
    }
    ops[k].type = OpType::Replace;
    ops[k].src = 0;
    ops[k].refs.clear();
    ops[k].frame.clear();
    st.converted++;
  };
  std::vector<int32_t> tindex(n), low(n);
  std::vector<uint8_t> onstack(n);
  // Fewer copy-back barriers: the target must checkpoint before overwriting
  // a block read since its last checkpoint. Among ready operations, those
  // whose destination was read since the last (simulated) barrier wait
  // until nothing else is ready; then one barrier lets them all go.
  std::vector<uint8_t> read_since(n, 0);
  std::vector<uint32_t> read_list, deferred;
  auto note_reads = [&](uint32_t k) {
    for (uint32_t w : succ[k])
      if (!read_since[w]) read_since[w] = 1, read_list.push_back(w);
  };
  // Break a COPY cycle without REPLACE: X copies old y, which the cycle
  // overwrites. A SAVE first copies old y into block t of a held-back
  // operation T (nobody reads old t); X then copies t, and T writes t's real
  // content after X. Edges: S before Y and X, X before T.
  auto convert_save = [&](uint32_t X) {
    uint32_t T;
    if (!pool.empty()) {
      T = pool.back();
      pool.pop_back();
    } else {
      // A held-back ZERO operation for a spare zero block.
      GOp zg;
      zg.dest = spare_zero.back();
      spare_zero.pop_back();
      zg.type = OpType::Zero;
      T = static_cast<uint32_t>(ops.size());
      writer[zg.dest] = static_cast<int32_t>(T);
      ops.push_back(std::move(zg));
      succ.push_back({});
      indeg.push_back(0);
      emitted.push_back(0);
      read_since.push_back(0);
      comp_of.push_back(-1);
      tindex.push_back(-1);
      low.push_back(0);
      onstack.push_back(0);
      withheld.push_back(1);
      pool_all.push_back(T);
      st.zero_parks++;
    }
    uint64_t y = ops[X].src;
    uint32_t Y = static_cast<uint32_t>(writer[y]);
    GOp sg;
    sg.dest = ops[T].dest;
    sg.type = OpType::Save;
    sg.src = y;
    uint32_t S = static_cast<uint32_t>(ops.size());
    ops.push_back(std::move(sg));
    succ.push_back({Y, X});
    indeg.push_back(0);
    emitted.push_back(0);
    read_since.push_back(0);
    comp_of.push_back(-1);
    tindex.push_back(-1);
    low.push_back(0);
    onstack.push_back(0);
    withheld.push_back(0);
    indeg[X]++;  // Y: +1 from S, -1 from X below
    auto& sx = succ[X];
    sx.erase(std::find(sx.begin(), sx.end(), Y));
    sx.push_back(T);
    indeg[T]++;
    ops[X].src = ops[T].dest;
    ready.push(S);
    st.saves++;
  };
  while (order.size() < ops.size()) {
    for (;;) {
      while (!ready.empty()) {
        uint32_t k = ready.top();
        ready.pop();
        if (emitted[k]) continue;
        if (read_since[k]) {
          deferred.push_back(k);
          continue;
        }
        emitted[k] = 1;
        order.push_back(k);
        note_reads(k);
        for (uint32_t w : succ[k])
          if (--indeg[w] == 0) ready.push(w);
      }
      if (deferred.empty()) break;
      st.barriers++;
      for (uint32_t w : read_list) read_since[w] = 0;
      read_list.clear();
      for (uint32_t k : deferred) ready.push(k);
      deferred.clear();
    }
    if (order.size() == ops.size()) break;
    if (!released) {
      size_t held = 0;
      for (uint32_t k : pool_all) held += !emitted[k];
      if (order.size() + held == ops.size()) {
        // Everything else is placed: the held-back operations go last.
        released = true;
        for (uint32_t k : pool_all)
          if (!emitted[k] && !indeg[k]) ready.push(k);
        continue;
      }
    }
    // Stuck: Tarjan over the remaining graph (iterative).
    std::fill(tindex.begin(), tindex.end(), -1);
    std::fill(onstack.begin(), onstack.end(), 0);
    int32_t counter = 0;
    std::vector<uint32_t> stk;
    std::vector<std::pair<uint32_t, size_t>> call;
    struct Victim {
      uint32_t v;
      int32_t cid;
      bool save;
    };
    std::vector<Victim> victims;
    size_t free_left = pool.size() + spare_zero.size();
    std::fill(comp_of.begin(), comp_of.end(), -1);
    for (uint32_t s = 0; s < ops.size(); s++) {
      if (emitted[s] || withheld[s] || tindex[s] >= 0) continue;
      call.push_back({s, 0});
      tindex[s] = low[s] = counter++;
      stk.push_back(s);
      onstack[s] = 1;
      while (!call.empty()) {
        auto& [v, ei] = call.back();
        if (ei < succ[v].size()) {
          uint32_t w = succ[v][ei++];
          if (emitted[w] || withheld[w]) continue;
          if (tindex[w] < 0) {
            tindex[w] = low[w] = counter++;
            stk.push_back(w);
            onstack[w] = 1;
            call.push_back({w, 0});
          } else if (onstack[w]) {
            low[v] = std::min(low[v], tindex[w]);
          }
          continue;
        }
        uint32_t vv = v;
        call.pop_back();
        if (!call.empty()) low[call.back().first] = std::min(low[call.back().first], low[vv]);
        if (low[vv] == tindex[vv]) {
          std::vector<uint32_t> comp;
          uint32_t w;
          do {
            w = stk.back();
            stk.pop_back();
            onstack[w] = 0;
            comp.push_back(w);
          } while (w != vv);
          if (comp.size() > 1) {
            uint32_t best = comp[0];
            int64_t bc = cost(best);
            for (uint32_t c : comp)
              if (int64_t cc = cost(c); cc < bc) best = c, bc = cc;
            for (uint32_t c : comp) comp_of[c] = static_cast<int32_t>(victims.size());
            bool save = false;
            if (free_left > 0) {
              for (uint32_t c : comp) {
                if (ops[c].type != OpType::Copy) continue;
                int32_t w2 = writer[ops[c].src];
                if (w2 >= 0 && comp_of[w2] == comp_of[c]) {
                  best = c;
                  save = true;
                  free_left--;
                  break;
                }
              }
            }
            victims.push_back({best, static_cast<int32_t>(victims.size()), save});
          }
        }
      }
    }
    if (victims.empty()) return IoError("update-diff: ordering stuck without a cycle (bug)");
    for (auto [v, cid, save] : victims) {
      if (save) convert_save(v);
      else convert(v, cid);
    }
  }
  return Status::Ok();
}

}  // namespace udm::update::v1gen
