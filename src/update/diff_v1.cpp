// update-diff, format v1: moved blocks (hash index of old), similar blocks
// (zstd with nearby old blocks as a prefix), a conflict-free order.
#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_c_format (magicless delta frames)
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <queue>
#include <thread>
#include <unordered_map>

#include "update/differ.h"
#include "update/format_v1.h"
#include "update/format_v1_io.h"
#include "util/progress.h"

namespace udm::update {

namespace {

struct Mapped {
  const uint8_t* p = nullptr;
  size_t n = 0;
  ~Mapped() {
    if (p && n) ::munmap(const_cast<uint8_t*>(p), n);
  }
};

Status map_file(const std::string& path, Mapped& m) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + path);
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return ErrnoStatus("stat " + path);
  }
  m.n = static_cast<size_t>(st.st_size);
  if (m.n) {
    void* p = ::mmap(nullptr, m.n, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      return ErrnoStatus("mmap " + path);
    }
    ::madvise(p, m.n, MADV_WILLNEED);
    m.p = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return Status::Ok();
}

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

struct CCtx {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ~CCtx() { ZSTD_freeCCtx(c); }
};

std::vector<uint8_t> zcompress(const uint8_t* src, size_t n, const uint8_t* prefix, size_t pn, int level, bool size_flag,
                               bool magicless = false) {
  thread_local CCtx cc;
  ZSTD_CCtx_reset(cc.c, ZSTD_reset_session_and_parameters);
  ZSTD_CCtx_setParameter(cc.c, ZSTD_c_compressionLevel, level);
  if (magicless) ZSTD_CCtx_setParameter(cc.c, ZSTD_c_format, ZSTD_f_zstd1_magicless);
  ZSTD_CCtx_setParameter(cc.c, ZSTD_c_checksumFlag, 0);
  ZSTD_CCtx_setParameter(cc.c, ZSTD_c_contentSizeFlag, size_flag ? 1 : 0);
  if (pn) ZSTD_CCtx_refPrefix(cc.c, prefix, pn);
  std::vector<uint8_t> out(ZSTD_compressBound(n));
  size_t r = ZSTD_compress2(cc.c, out.data(), out.size(), src, n);
  if (ZSTD_isError(r)) return {};
  out.resize(r);
  return out;
}

std::array<uint8_t, 32> sha256(const uint8_t* p, size_t n) {
  std::array<uint8_t, 32> out{};
  unsigned len = 0;
  EVP_Digest(p, n, out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

// Content-defined anchors: a gear hash over the last 64 bytes; positions
// where its top 6 bits are zero (about 1 in 64) are anchors, keyed by the
// hash. (The top bits depend on all 64 bytes; the low bits only on the last
// few, which made text with a small alphabet nearly anchorless.)
struct Gear {
  uint64_t t[256];
  Gear() {
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (auto& v : t) {
      x += 0x9e3779b97f4a7c15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      v = z ^ (z >> 31);
    }
  }
};
const Gear kGear;
// A REPLACE block also gains from its chunk neighbours: DELTA must win clearly.
constexpr uint32_t kDeltaNum = 7;  // DELTA if frame + refs < 7/10 of the block alone
template <class F>
void anchors(const uint8_t* p, size_t n, F f) {
  uint64_t h = 0;
  int found = 0;
  for (size_t i = 0; i < n && found < 48; i++) {
    h = (h << 1) + kGear.t[p[i]];
    if (i >= 63 && (h >> 58) == 0) f(h, i), found++;
  }
}

// The head of a diff (header, stash, metadata) as a device of the whole
// diff's size; the payload bytes read as zeroes (load_v1 never reads them).
class HeadDevice : public BlockDevice {
 public:
  HeadDevice(std::vector<uint8_t> head, uint64_t size) : head_(std::move(head)), size_(size) {}
  uint64_t size() const override { return size_; }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    std::fill(buf.begin(), buf.end(), 0);
    if (off < head_.size())
      std::memcpy(buf.data(), head_.data() + off, std::min<uint64_t>(buf.size(), head_.size() - off));
    return Status::Ok();
  }
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return ReadOnly("diff head: read-only"); }
  Status do_flush() override { return Status::Ok(); }

 private:
  std::vector<uint8_t> head_;
  uint64_t size_;
};

struct GOp {
  uint64_t dest = 0;
  OpType type = OpType::Replace;
  uint64_t src = 0;
  std::vector<uint64_t> refs;  // DELTA
  std::vector<uint8_t> frame;  // DELTA
  uint32_t alt_cost = 0;       // DELTA, XOR: estimated payload bytes
  uint32_t rep_cost = 0;       // standalone compressed size (0 = not computed)
};

}  // namespace

Result<DiffV1Stats> make_diff_v1(const std::string& old_path, const std::string& new_path,
                                 const std::string& out_path, const DiffV1Options& o) {
  auto t0 = std::chrono::steady_clock::now();
  // The format's limits (format_v1.h), checked up front where the options decide them.
  if (o.block_size < (1u << kV1MinBlockBits) || o.block_size > (1u << kV1MaxBlockBits) ||
      (o.block_size & (o.block_size - 1)))
    return Invalid(fmt::format("--block-size {}: must be a power of two in {}..{}", o.block_size, 1u << kV1MinBlockBits,
                               1u << kV1MaxBlockBits));
  if (o.chunk_blocks == 0 || uint64_t{o.chunk_blocks} * o.block_size > kV1MaxChunkBytes)
    return Invalid(fmt::format("--chunk-blocks {}: must be 1.. with chunks of at most {} MiB", o.chunk_blocks,
                               kV1MaxChunkBytes >> 20));
  const uint64_t bs = o.block_size;
  const unsigned threads = std::max(1u, o.threads);
  const int level = o.level ? o.level : 19;
  Mapped oldm, newm;
  UDM_TRY(map_file(old_path, oldm));
  UDM_TRY(map_file(new_path, newm));
  // OLD and NEW may differ in size: destinations are the new image's blocks
  // [0, blocks), sources only the old image's [0, old_blocks) (the system
  // device past the old image's end holds anything).
  const uint64_t size = newm.n, old_size = oldm.n;
  if (size == 0 || size % bs)
    return Invalid(fmt::format("new image {}: size {} is not a positive multiple of the block size {}", new_path, size, bs));
  if (old_size == 0 || old_size % bs)
    return Invalid(fmt::format("old image {}: size {} is not a positive multiple of the block size {}", old_path, old_size, bs));
  const uint64_t blocks = size / bs, old_blocks = old_size / bs;
  const uint64_t span = std::max(blocks, old_blocks);
  // This generator indexes blocks with 32-bit integers; the format allows kV1MaxImageBlocks.
  if (span >= (1ull << 31) || span > kV1MaxImageBlocks)
    return Invalid(fmt::format("image of {} blocks: update-diff handles fewer than 2^31 blocks", span));
  const uint8_t* OLD = oldm.p;
  const uint8_t* NEW = newm.p;
  if (!o.progress) Progress::force_enable(false);

  DiffV1Stats st;
  st.image_bytes = size;
  st.blocks = blocks;
  st.old_blocks = old_blocks;

  // 1. Hashes: SHA-256 of both images, XXH3 of every old block, changed flags.
  std::array<uint8_t, 32> old_sha{}, new_sha{};
  std::vector<uint64_t> oh(old_blocks);
  std::vector<uint8_t> changed(blocks);  // every new block past the old image's end is "changed"
  {
    Progress prog("update-diff: hashing", span, false);
    std::thread sh([&] {
      old_sha = sha256(OLD, old_size);
      new_sha = sha256(NEW, size);
    });
    parallel_for(span, threads, [&](size_t b) {
      if (b < old_blocks) oh[b] = XXH3_64bits(OLD + b * bs, bs);
      if (b < blocks) changed[b] = b >= old_blocks || std::memcmp(OLD + b * bs, NEW + b * bs, bs) != 0;
      if ((b & 255) == 0) prog.add(std::min<uint64_t>(256, span - b));
    });
    sh.join();
    prog.finish();
  }
  // Index of old blocks by content hash; blocks the update leaves alone first
  // (a COPY from them never conflicts).
  // (Old blocks past the new image's end are never overwritten either.)
  std::unordered_map<uint64_t, uint32_t> index;
  index.reserve(old_blocks * 2);
  for (int pass = 0; pass < 2; pass++)
    for (uint64_t b = 0; b < old_blocks; b++)
      if ((b < blocks && changed[b]) == (pass == 1)) index.emplace(oh[b], static_cast<uint32_t>(b));
  oh.clear();
  oh.shrink_to_fit();
  // Anchor index of old blocks (for similar blocks anywhere in old).
  // Entries are (key, byte position of the anchor's last byte in old).
  std::vector<std::pair<uint64_t, uint64_t>> aidx;
  if (o.delta) {
    std::vector<std::vector<std::pair<uint64_t, uint64_t>>> parts(threads);
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; t++)
      ts.emplace_back([&, t] {
        for (uint64_t b = t; b < old_blocks; b += threads)
          anchors(OLD + b * bs, bs, [&](uint64_t k, size_t i) { parts[t].push_back({k, b * bs + i}); });
        std::sort(parts[t].begin(), parts[t].end());
      });
    for (auto& t : ts) t.join();
    for (auto& p : parts) {
      size_t mid = aidx.size();
      aidx.insert(aidx.end(), p.begin(), p.end());
      std::inplace_merge(aidx.begin(), aidx.begin() + static_cast<ptrdiff_t>(mid), aidx.end());
      p.clear();
      p.shrink_to_fit();
    }
  }

  // 2. Classify changed blocks.
  std::vector<GOp> ops;
  std::vector<int32_t> writer(span, -1);  // operation writing a block (final content), -1 if none
  std::vector<uint8_t> zero(bs, 0);
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

  // 3. Similar blocks: for a novel block, the old blocks at its own place and
  // where its COPY neighbours came from (the same file's old version), one
  // block either side; zstd with them as prefix vs alone.
  std::vector<uint32_t> novel;
  for (uint32_t k = 0; k < ops.size(); k++)
    if (ops[k].type == OpType::Replace) novel.push_back(k);
  {
    // The workers change novel ops (type, src) while looking at their
    // neighbours' COPY sources: read those from a copy taken before.
    std::vector<int64_t> copy_src(ops.size(), -1);
    for (uint32_t k = 0; k < ops.size(); k++)
      if (ops[k].type == OpType::Copy) copy_src[k] = static_cast<int64_t>(ops[k].src);
    Progress prog("update-diff: similar blocks", novel.size(), false);
    parallel_for(novel.size(), threads, [&](size_t i) {
      GOp& g = ops[novel[i]];
      const uint8_t* nb = NEW + g.dest * bs;
      auto rep = zcompress(nb, bs, nullptr, 0, level, false);
      g.rep_cost = static_cast<uint32_t>(rep.empty() ? bs : rep.size());
      if (!o.delta) return prog.add(1);
      // bases[0] is the block's own place in old (if the old image has it).
      const bool own = g.dest < old_blocks;
      std::vector<uint64_t> bases;
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
      std::vector<std::pair<uint32_t, uint64_t>> votes;   // (count, block)
      std::vector<std::pair<uint32_t, uint64_t>> svotes;  // (count, byte offset in old of this block's start)
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
      // XOR: the old bytes at one offset that differ least from this block
      // (the offsets anchors agree on, its own place, where COPY neighbours
      // put its old copy). Sparse edits leave a payload of mostly zeroes.
      {
        std::sort(svotes.begin(), svotes.end(), std::greater<>());
        std::vector<uint64_t> cand;
        for (size_t k = 0; k < svotes.size() && k < 3; k++)
          if (svotes[k].first >= 2) cand.push_back(svotes[k].second);
        for (uint64_t b : bases) cand.push_back(b * bs);
        uint64_t best = UINT64_MAX;
        size_t best_diff = bs / 4 + 1;  // more differing bytes than this: not an XOR block
        for (uint64_t c : cand) {
          if (c > old_size - bs) continue;
          size_t diff = 0;
          const uint8_t* ob = OLD + c;
          for (size_t k = 0; k < bs && diff < best_diff; k++) diff += ob[k] != nb[k];
          if (diff < best_diff) best_diff = diff, best = c;
        }
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
      }
      std::sort(votes.begin(), votes.end(), std::greater<>());
      std::vector<uint64_t> refs;
      for (size_t vi = 0; vi < votes.size() && vi < o.anchor_blocks; vi++)
        if (votes[vi].first >= 2 && std::find(bases.begin(), bases.end(), votes[vi].second) == bases.end())
          refs.push_back(votes[vi].second);
      std::reverse(refs.begin(), refs.end());
      // Farthest candidates first: the prefix's end (closest offsets) gets the best guess.
      for (size_t bi = bases.size(); bi-- > 0;) {
        for (int64_t dlt : {-1, 0, 1}) {
          // Around its own place only the block itself: its neighbours are
          // usually rewritten too and would tie the two into a cycle.
          if (own && bi == 0 && dlt != 0) continue;
          int64_t r = static_cast<int64_t>(bases[bi]) + dlt;
          if (r < 0 || r >= static_cast<int64_t>(old_blocks)) continue;
          if (std::memcmp(OLD + uint64_t(r) * bs, zero.data(), bs) == 0) continue;
          if (std::find(refs.begin(), refs.end(), uint64_t(r)) == refs.end()) refs.push_back(uint64_t(r));
        }
      }
      if (refs.size() > kV1MaxRefs) refs.erase(refs.begin(), refs.end() - kV1MaxRefs);
      if (refs.empty()) return prog.add(1);
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
      prog.add(1);
    });
    prog.finish();
  }

  // 4. Order: op A before op B when A reads the old block B overwrites.
  // Kahn's algorithm (lowest destination first); when stuck, every cycle
  // (strongly connected component) loses its cheapest reader, turned into
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
  std::vector<uint32_t> order;
  order.reserve(n);
  std::vector<uint8_t> emitted(n, 0);
  std::priority_queue<uint32_t, std::vector<uint32_t>, std::greater<>> ready;
  // REPLACE/ZERO operations whose old block nobody reads are held back to
  // the end: they can host a block saved to break a COPY cycle (SAVE).
  std::vector<uint8_t> withheld(n, 0);
  std::vector<uint32_t> pool;
  for (uint32_t k = 0; k < n; k++) {
    if (indeg[k]) continue;
    if (ops[k].type == OpType::Replace || ops[k].type == OpType::Zero) {
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
      if (!changed[b] && !read[b] && std::memcmp(OLD + b * bs, zero.data(), bs) == 0) spare_zero.push_back(b);
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

  // 5. Payload. DELTA operations consecutive in the apply order whose
  // destinations are near each other (the same file, usually) share one
  // frame when that is smaller: every member then reads the union of their
  // references, so the union may only hold blocks that nothing overwrites
  // before the group's last member.
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
        if ((d > last ? d - last : last - d) <= 64) {
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
  auto meta = encode_v1_meta(vops, chunk_lengths, frames, xchunk_lengths, block_bits);
  std::vector<uint8_t> cmeta(ZSTD_compressBound(meta.size()));
  size_t cm = ZSTD_compress(cmeta.data(), cmeta.size(), meta.data(), meta.size(), 19);
  if (ZSTD_isError(cm)) return IoError("update-diff: zstd failed on the metadata");
  cmeta.resize(cm);

  V1Header h;
  h.block_bits = static_cast<uint8_t>(__builtin_ctz(o.block_size));
  h.chunk_blocks = o.chunk_blocks;
  h.image_blocks = blocks;
  h.old_blocks = old_blocks;
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

  // Never write a diff the loader refuses: the header against the format's
  // limits, then the header and metadata through load_v1 itself (every
  // operation, count, source, order and SAVE rule), before the first byte.
  if (Status v = v1_validate_header(h); !v.ok())
    return Invalid(fmt::format("update-diff: this update exceeds a limit of format v1 ({}); nothing written", v.message()));
  {
    std::vector<uint8_t> head(hb.begin(), hb.end());
    head.resize(h.meta_offset, 0);  // the stash (zero in a fresh diff)
    head.insert(head.end(), cmeta.begin(), cmeta.end());
    HeadDevice dev(std::move(head), h.data_offset + h.data_size);
    auto check = load_v1(dev);
    if (!check.ok())
      return IoError(fmt::format("update-diff: internal error: the diff would not load ({}); nothing written",
                                 check.status().message()));
  }

  int fd = ::open(out_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create " + out_path);
  uint64_t pos = 0;
  auto append = [&](const uint8_t* p, size_t len) -> Status {
    size_t done = 0;
    while (done < len) {
      ssize_t w = ::pwrite(fd, p + done, len - done, static_cast<off_t>(pos + done));
      if (w < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("write " + out_path);
      }
      done += static_cast<size_t>(w);
    }
    pos += len;
    return Status::Ok();
  };
  Status s = append(hb.data(), hb.size());
  if (s.ok() && stash) s = append(zero.data(), bs);
  if (s.ok()) s = append(cmeta.data(), cmeta.size());
  for (auto& c : chunks)
    if (s.ok()) s = append(c.data(), c.size());
  for (auto& f : groups)
    if (s.ok()) s = append(f.data.data(), f.data.size());
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoStatus("fsync " + out_path);
  ::close(fd);
  UDM_TRY(s);
  st.chunks = nchunks;
  st.ops = vops.size();
  st.meta_bytes = cmeta.size();
  st.diff_bytes = pos;
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace udm::update
