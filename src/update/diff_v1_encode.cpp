// update-diff v1, phase "encode" (diff_v1_internal.h): DELTA operations
// consecutive in the apply order and near each other share one frame when
// that is smaller; REPLACE and XOR blocks, in destination order, are
// compressed into chunks (two threads); the operations become the metadata
// (zstd -19) and the header is filled in. Nothing is written here.
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include <cstring>
#include <memory>
#include <unordered_map>

#include "update/diff_v1_internal.h"
#include "util/progress.h"

namespace udm::update::v1gen {

Result<Encoded> encode(const Input& in, const OldIndex& ix, Plan& plan, DiffV1Stats& st) {
  const DiffV1Options& o = in.o;
  const uint8_t* OLD = in.OLD;
  const uint8_t* NEW = in.NEW;
  const uint64_t bs = in.bs, blocks = in.blocks, old_blocks = in.old_blocks, span = in.span;
  const unsigned threads = in.threads;
  const int level = in.level;
  const std::array<uint8_t, 32>& old_sha = ix.old_sha;
  const std::array<uint8_t, 32>& new_sha = ix.new_sha;
  std::vector<GOp>& ops = plan.ops;
  const std::vector<uint32_t>& order = plan.order;
  // DELTA operations consecutive in the apply order whose
  // destinations are near each other (within kDeltaNear blocks: the same
  // file, or a file system's metadata area) share one frame when that is
  // smaller: every member then reads the union of their references, so the
  // union may only hold blocks that nothing overwrites before the group's
  // last member. kDeltaNear was 64 until 2026-11-28; 512 made every bench
  // pair smaller (ext4 "own" -2 886 bytes, rebuilt OTA -558, erofs -479,
  // squashfs -43, in place -15), 1 024 grew the in-place pair.
  constexpr uint64_t kDeltaNear = 512;
  std::vector<uint64_t> over_at(span, UINT64_MAX);  // first position that overwrites a block (SAVE or final)
  for (size_t p = order.size(); p-- > 0;) over_at[ops[order[p]].dest] = p;
  struct Frame {
    std::vector<uint32_t> members;  // ops, apply order
    std::vector<uint64_t> refs;
    std::vector<uint8_t> data;      // grouped frame (empty: the members' own frames)
  };
  std::vector<Frame> groups;
  {
    const size_t G = std::clamp<uint32_t>(o.delta_group, 1, kV1MaxGroup);
    Frame cur;
    for (size_t p = 0; p < order.size(); p++) {
      uint32_t k = order[p];
      if (ops[k].type != OpType::Delta) continue;
      bool join = false;
      std::vector<uint64_t> uni;
      if (!cur.members.empty() && cur.members.size() < G) {
        uint64_t last = ops[cur.members.back()].dest, d = ops[k].dest;
        if ((d > last ? d - last : last - d) <= kDeltaNear) {
          uni = cur.refs;
          for (uint64_t r : ops[k].refs)
            if (std::find(uni.begin(), uni.end(), r) == uni.end()) uni.push_back(r);
          join = uni.size() <= kV1MaxRefs &&
                 std::all_of(uni.begin(), uni.end(), [&](uint64_t r) { return over_at[r] > p; });
        }
      }
      if (join) {
        cur.members.push_back(k);
        cur.refs = std::move(uni);
        continue;
      }
      if (!cur.members.empty()) groups.push_back(std::move(cur));
      cur = Frame{{k}, ops[k].refs, {}};
    }
    if (!cur.members.empty()) groups.push_back(std::move(cur));
    Progress prog("update-diff: grouping deltas", groups.size(), false);
    parallel_for(groups.size(), threads, [&](size_t gi) {
      Frame& f = groups[gi];
      if (f.members.size() > 1) {
        std::vector<uint8_t> prefix(f.refs.size() * bs), raw(f.members.size() * bs);
        for (size_t i = 0; i < f.refs.size(); i++) std::memcpy(prefix.data() + i * bs, OLD + f.refs[i] * bs, bs);
        size_t singles = 0;
        for (size_t i = 0; i < f.members.size(); i++) {
          std::memcpy(raw.data() + i * bs, NEW + ops[f.members[i]].dest * bs, bs);
          singles += ops[f.members[i]].frame.size() + 2 * ops[f.members[i]].refs.size();
        }
        auto fr = zcompress(raw.data(), raw.size(), prefix.data(), prefix.size(), level, false, true);
        if (!fr.empty() && fr.size() + 2 * f.refs.size() < singles) f.data = std::move(fr);
      }
      prog.add(1);
    });
    prog.finish();
    // A group that did not pay is split back into single frames.
    std::vector<Frame> out;
    for (auto& f : groups) {
      if (f.members.size() > 1 && f.data.empty()) {
        for (uint32_t k : f.members) out.push_back(Frame{{k}, ops[k].refs, {}});
      } else {
        out.push_back(std::move(f));
      }
    }
    groups = std::move(out);
  }
  std::vector<std::pair<uint32_t, uint32_t>> frame_of(ops.size(), {UINT32_MAX, 0});  // op -> (frame, member)
  std::vector<V1Frame> frames;
  for (uint32_t fi = 0; fi < groups.size(); fi++) {
    Frame& f = groups[fi];
    if (f.data.empty()) f.data = std::move(ops[f.members[0]].frame);
    for (uint32_t m = 0; m < f.members.size(); m++) frame_of[f.members[m]] = {fi, m};
    V1Frame vf;
    vf.length = f.data.size();
    vf.refs = f.refs;
    vf.blocks = static_cast<uint32_t>(f.members.size());
    frames.push_back(std::move(vf));
  }
  std::vector<V1Op> vops;
  std::vector<uint32_t> rep_blocks, xor_blocks;
  bool stash = false;
  for (uint32_t k : order) {
    GOp& g = ops[k];
    V1Op v;
    v.dest = g.dest;
    v.type = g.type;
    v.src = g.src;
    if (g.type == OpType::Zero) st.zero++;
    if (g.type == OpType::Copy) st.copy++;
    if (g.type == OpType::Save) st.save_ops++;
    if (g.type == OpType::Replace) {
      rep_blocks.push_back(k);
      st.replace++;
    }
    if (g.type == OpType::Xor) {
      xor_blocks.push_back(k);
      st.xor_ops++;
      if (g.src / bs == g.dest || (g.src + bs - 1) / bs == g.dest) {
        stash = true;
        st.stash_ops++;
      }
    }
    if (g.type == OpType::Delta) {
      v.index = frame_of[k].first;
      v.member = frame_of[k].second;
      st.delta++;
      const auto& refs = frames[v.index].refs;
      if (std::find(refs.begin(), refs.end(), g.dest) != refs.end()) {
        stash = true;
        st.stash_ops++;
      }
    }
    vops.push_back(v);
  }
  st.delta_frames = frames.size();
  // REPLACE blocks go into the chunks in destination order (the reader
  // derives each one's place the same way).
  // So do the XOR payloads (new block XOR the old bytes at its source).
  auto by_dest = [&](uint32_t a, uint32_t b) { return ops[a].dest < ops[b].dest; };
  std::sort(rep_blocks.begin(), rep_blocks.end(), by_dest);
  std::sort(xor_blocks.begin(), xor_blocks.end(), by_dest);
  const size_t nchunks = (rep_blocks.size() + o.chunk_blocks - 1) / o.chunk_blocks;
  const size_t nxchunks = (xor_blocks.size() + o.chunk_blocks - 1) / o.chunk_blocks;
  std::vector<std::vector<uint8_t>> chunks(nchunks + nxchunks);
  // A REPLACE chunk's references: old blocks still intact when its last
  // member is applied (nothing writes or parks over them at or before that
  // position; the loader checks the same). Which of them pay is asked of
  // zstd itself: the chunk is compressed (level 9) with all of them as the
  // prefix — up to 120 MiB, those nearest the chunk's destinations first on
  // larger images, the blocks its members resemble always — and each block
  // weighs the bytes matched in it. The heaviest v1_max_chunk_refs are kept,
  // in increasing order (encoded as gaps, read in runs).
  //
  // With chunk_new_refs, an old block that is no longer intact then but was
  // moved (a COPY reads it) is a reference too, named by the COPY's block of
  // the new image (old_blocks + that block, flag CHUNK_NEW_REFS): the same
  // bytes, readable at every moment (docs/update-format.md).
  std::vector<std::vector<uint64_t>> crefs(nchunks);
  std::unordered_map<uint64_t, uint64_t> moved_to;  // old block -> a COPY's block holding its bytes
  if (o.chunk_refs && o.chunk_new_refs) {
    // A COPY of a parked block reads the parking block (SAVE's destination)
    // for the bytes of the SAVE's source.
    std::unordered_map<uint64_t, uint64_t> parked;
    for (const GOp& g : ops)
      if (g.type == OpType::Save) parked.emplace(g.dest, g.src);
    for (const GOp& g : ops) {
      if (g.type != OpType::Copy) continue;
      auto p = parked.find(g.src);
      const uint64_t r = p == parked.end() ? g.src : p->second;
      if (r < old_blocks && std::memcmp(OLD + r * bs, NEW + g.dest * bs, bs) == 0) moved_to.emplace(r, g.dest);
    }
  }
  // A reference's bytes: the old block, or the new image's (a COPY's) block.
  auto ref_bytes = [&](uint64_t r) { return r < old_blocks ? OLD + r * bs : NEW + (r - old_blocks) * bs; };
  if (o.chunk_refs) {
    std::vector<uint64_t> pos_of(ops.size(), 0);
    for (size_t p = 0; p < order.size(); p++) pos_of[order[p]] = p;
    const uint64_t cap = v1_max_chunk_refs(static_cast<uint32_t>(__builtin_ctz(o.block_size)));
    const uint64_t max_pool = (120ull << 20) / bs;
    Progress prog("update-diff: chunk references", nchunks, false);
    parallel_for(nchunks, threads, [&](size_t c) {
      size_t first = c * o.chunk_blocks, cnt = std::min<size_t>(o.chunk_blocks, rep_blocks.size() - first);
      uint64_t last = 0;
      for (size_t i = 0; i < cnt; i++) last = std::max(last, pos_of[rep_blocks[first + i]]);
      // The reference naming old block r's bytes at the chunk's last
      // member, or none: r itself while intact, else the block a COPY moved
      // it to.
      constexpr uint64_t kNone = UINT64_MAX;
      auto ref_for = [&](uint64_t r) -> uint64_t {
        if (r >= old_blocks || std::memcmp(OLD + r * bs, in.zero.data(), bs) == 0) return kNone;
        if (over_at[r] > last) return r;
        auto m = moved_to.find(r);
        return m == moved_to.end() ? kNone : old_blocks + m->second;
      };
      std::vector<uint64_t> pool;
      auto add = [&](uint64_t r) {
        uint64_t v = ref_for(r);
        if (v != kNone) pool.push_back(v);
      };
      for (size_t i = 0; i < cnt; i++)
        for (uint64_t r : ops[rep_blocks[first + i]].crefs) add(r);
      // Then outwards from the middle of the chunk's destinations.
      const uint64_t mid = std::min<uint64_t>(ops[rep_blocks[first + cnt / 2]].dest, old_blocks - 1);
      for (uint64_t d = 0; pool.size() < max_pool && (d <= mid || mid + d < old_blocks); d++) {
        if (d <= mid) add(mid - d);
        if (d && mid + d < old_blocks && pool.size() < max_pool) add(mid + d);
      }
      std::sort(pool.begin(), pool.end());
      pool.erase(std::unique(pool.begin(), pool.end()), pool.end());
      if (pool.empty()) return prog.add(1);
      // Moved blocks first, farthest from the chunk: where an intact old
      // block has the same bytes, zstd then matches it (the nearer, cheaper
      // offset) and the moved copy gets no weight, so moved blocks are
      // listed only for bytes no intact block offers.
      std::stable_partition(pool.begin(), pool.end(), [&](uint64_t v) { return v >= old_blocks; });
      std::vector<uint8_t> pre(pool.size() * bs), raw(cnt * bs);
      for (size_t k = 0; k < pool.size(); k++) std::memcpy(pre.data() + k * bs, ref_bytes(pool[k]), bs);
      for (size_t i = 0; i < cnt; i++) std::memcpy(raw.data() + i * bs, NEW + ops[rep_blocks[first + i]].dest * bs, bs);
      std::unordered_map<uint64_t, uint64_t> weight;
      std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> zc(ZSTD_createCCtx(), ZSTD_freeCCtx);
      ZSTD_CCtx_setParameter(zc.get(), ZSTD_c_compressionLevel, 9);
      ZSTD_CCtx_setParameter(zc.get(), ZSTD_c_windowLog, static_cast<int>(kV1ChunkWindowLog));
      ZSTD_CCtx_refPrefix(zc.get(), pre.data(), pre.size());
      // (ZSTD_sequenceBound is too small with a prefix in zstd 1.5.4: it crashed.)
      std::vector<ZSTD_Sequence> seqs(raw.size() + 4096);
      size_t ns = ZSTD_generateSequences(zc.get(), seqs.data(), seqs.size(), raw.data(), raw.size());
      if (ZSTD_isError(ns)) return prog.add(1);
      int64_t pos = 0;
      const int64_t pn = static_cast<int64_t>(pre.size()), sbs = static_cast<int64_t>(bs);
      for (size_t q = 0; q < ns; q++) {
        pos += seqs[q].litLength;
        const int64_t ml = seqs[q].matchLength;
        if (ml && static_cast<int64_t>(seqs[q].offset) > pos) {
          // The match starts in the prefix: every prefix block it touches.
          int64_t at = pn + pos - static_cast<int64_t>(seqs[q].offset);
          for (int64_t b = std::max<int64_t>(at, 0); b < std::min(at + ml, pn); b = (b / sbs + 1) * sbs)
            weight[pool[static_cast<size_t>(b / sbs)]] += static_cast<uint64_t>(ml);
        }
        pos += ml;
      }
      std::vector<std::pair<uint64_t, uint64_t>> w(weight.begin(), weight.end());
      std::sort(w.begin(), w.end(),
                [](auto& a, auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
      if (w.size() > cap) w.resize(cap);
      for (auto& [r, n] : w) crefs[c].push_back(r);
      std::sort(crefs[c].begin(), crefs[c].end());
      prog.add(1);
    });
    prog.finish();
  }
  {
    Progress prog("update-diff: compressing", nchunks + nxchunks, false);
    parallel_for(nchunks + nxchunks, threads, [&](size_t c) {
      const bool x = c >= nchunks;
      const auto& list = x ? xor_blocks : rep_blocks;
      size_t first = (x ? c - nchunks : c) * o.chunk_blocks, cnt = std::min<size_t>(o.chunk_blocks, list.size() - first);
      std::vector<uint8_t> raw(cnt * bs);
      for (size_t i = 0; i < cnt; i++) {
        const GOp& g = ops[list[first + i]];
        std::span<uint8_t> blk(raw.data() + i * bs, bs);
        std::memcpy(blk.data(), NEW + g.dest * bs, bs);
        if (x) v1_xor_into(blk, OLD + g.src);
      }
      chunks[c] = zcompress(raw.data(), raw.size(), nullptr, 0, level, true);
      if (!x && !crefs[c].empty()) {
        std::vector<uint8_t> prefix(crefs[c].size() * bs);
        for (size_t k = 0; k < crefs[c].size(); k++) std::memcpy(prefix.data() + k * bs, ref_bytes(crefs[c][k]), bs);
        auto with = zcompress(raw.data(), raw.size(), prefix.data(), prefix.size(), level, true, false,
                              static_cast<int>(kV1ChunkWindowLog));
        // Kept if it pays for its list (about 2 bytes a block).
        if (!with.empty() && with.size() + 2 * crefs[c].size() < chunks[c].size()) chunks[c] = std::move(with);
        else crefs[c].clear();
      }
      prog.add(1);
    });
    prog.finish();
  }
  std::vector<uint64_t> chunk_lengths, xchunk_lengths;
  for (size_t c = 0; c < chunks.size(); c++) {
    if (chunks[c].empty()) return IoError("update-diff: zstd failed on a chunk");
    (c < nchunks ? chunk_lengths : xchunk_lengths).push_back(chunks[c].size());
  }
  st.xchunks = nxchunks;
  const uint8_t block_bits = static_cast<uint8_t>(__builtin_ctz(o.block_size));
  const bool any_crefs = std::any_of(crefs.begin(), crefs.end(), [](auto& v) { return !v.empty(); });
  for (auto& v : crefs) st.chunk_ref_blocks += v.size();
  for (auto& v : crefs)
    for (uint64_t r : v) st.chunk_new_ref_blocks += r >= old_blocks;
  auto meta = encode_v1_meta(vops, chunk_lengths, frames, xchunk_lengths, block_bits, any_crefs ? &crefs : nullptr);
  std::vector<uint8_t> cmeta(ZSTD_compressBound(meta.size()));
  size_t cm = ZSTD_compress(cmeta.data(), cmeta.size(), meta.data(), meta.size(), 19);
  if (ZSTD_isError(cm)) return IoError("update-diff: zstd failed on the metadata");
  cmeta.resize(cm);

  V1Header h;
  h.block_bits = static_cast<uint8_t>(__builtin_ctz(o.block_size));
  h.chunk_blocks = o.chunk_blocks;
  h.image_blocks = blocks;
  h.old_blocks = old_blocks;
  h.chunk_refs = any_crefs;
  h.chunk_new_refs = st.chunk_new_ref_blocks > 0;
  h.op_count = vops.size();
  h.stash_blocks = stash ? 1 : 0;
  h.meta_offset = kV1HeaderSize + (stash ? bs : 0);
  h.meta_size = cmeta.size();
  h.meta_raw_size = meta.size();
  h.data_offset = h.meta_offset + h.meta_size;
  h.data_size = 0;
  for (auto& c : chunks) h.data_size += c.size();
  for (auto& f : frames) h.data_size += f.length;
  h.old_sha256 = old_sha;
  h.new_sha256 = new_sha;
  auto hb = encode_v1_header(h);
  st.chunks = nchunks;
  st.ops = vops.size();
  st.meta_bytes = cmeta.size();
  Encoded e;
  e.h = h;
  e.header = hb;
  e.stash = stash;
  if (stash && !o.stash_always) {
    // Without the stash if every operation reading its own block finds a
    // scratch block (the loader's rule, kV1SelfScratchScan): a block less
    // to download. The header is all that changes.
    V1Header lean = h;
    lean.stash_blocks = 0;
    lean.meta_offset -= bs;
    lean.data_offset -= bs;
    auto lb = encode_v1_header(lean);
    if (load_v1_head(lb, cmeta, lean.data_offset + lean.data_size).ok()) {
      e.h = lean;
      e.header = lb;
      e.stash = false;
    }
  }
  st.stash_blocks = e.stash ? 1 : 0;
  e.cmeta = std::move(cmeta);
  e.chunks = std::move(chunks);
  for (auto& f : groups) e.frames.push_back(std::move(f.data));
  return e;
}

}  // namespace udm::update::v1gen
