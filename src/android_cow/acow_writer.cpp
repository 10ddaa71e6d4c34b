#include "android_cow/acow_writer.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <unordered_map>

#include <zstd.h>

#include "android_cow/acow_codec.h"
#include "io/mapped_file.h"
#include "update/diff_v1_internal.h"
#include "util/endian.h"

namespace udm::acow {

namespace {

constexpr uint32_t kScratchBytes = 2 << 20;

struct Planned {
  uint8_t type = 0;
  uint64_t new_block = 0;
  uint64_t source = 0;  // COPY: old block; XOR: byte offset
  std::vector<uint8_t> xor_data;  // XOR: new ^ old (uncompressed)
};

uint64_t hash_block(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    h = (h ^ v) * 1099511628211ull;
    h ^= h >> 29;
  }
  return h;
}

bool all_zero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return false;
  return true;
}

// Compressed payload; stored raw when compression does not make it smaller.
Result<std::vector<uint8_t>> encode(Comp c, std::span<const uint8_t> in, bool v2, int zstd_level) {
  if (c == Comp::None) return std::vector<uint8_t>(in.begin(), in.end());
  UDM_ASSIGN_OR_RETURN(auto z, compress(c, in, zstd_level));
  // v2 gz/brotli are always compressed (README §6.1); the rest raw iff not smaller.
  if (v2 && (c == Comp::Gz || c == Comp::Brotli)) {
    if (z.size() > 0xffff) return Invalid("compressed block does not fit v2's 16-bit data_length");
    return z;
  }
  if (z.size() >= in.size()) return std::vector<uint8_t>(in.begin(), in.end());
  return z;
}

struct Emit {
  uint8_t type;
  uint64_t new_block, source;
  uint8_t unit_shift = 0;
  std::vector<uint8_t> data;  // encoded payload
};

}  // namespace

Result<std::vector<uint8_t>> make_cow(std::span<const uint8_t> old_img, std::span<const uint8_t> new_img,
                                      const WriterOptions& o, WriterStats* st_out) {
  const uint32_t bs = o.block_size;
  if (bs < 512 || bs > 65536 || (bs & (bs - 1))) return Invalid(fmt::format("block size {} (want a power of two, 512..65536)", bs));
  if (old_img.size() != new_img.size())
    return Invalid(fmt::format("the old image is {} bytes, the new one {}: Android's COW format keeps the size", old_img.size(),
                               new_img.size()));
  if (new_img.size() % bs) return Invalid(fmt::format("the image size {} is not a multiple of the block size {}", new_img.size(), bs));
  if (o.version != 2 && o.version != 3) return Invalid(fmt::format("version {} (want 2 or 3)", o.version));
  if (o.version == 3 && (o.unit < bs || o.unit > (bs << kMaxUnitShift) || (o.unit & (o.unit - 1))))
    return Invalid(fmt::format("compression unit {} (want block_size << k, k = 0..6: {}..{})", o.unit, bs, bs << kMaxUnitShift));
  if (o.version == 2 && o.cluster_ops < 2) return Invalid("cluster_ops must be at least 2");
  const uint64_t nblocks = new_img.size() / bs;
  if (nblocks > UINT32_MAX) return Invalid("image too large for the format's 32-bit block numbers");
  WriterStats st;
  st.blocks = nblocks;
  auto oldb = [&](uint64_t b) { return old_img.data() + b * bs; };
  auto newb = [&](uint64_t b) { return new_img.data() + b * bs; };

  // 1. Index the old blocks by content.
  std::unordered_map<uint64_t, uint32_t> index;
  index.reserve(static_cast<size_t>(nblocks));
  for (uint64_t b = 0; b < nblocks; b++)
    if (!all_zero(oldb(b), bs)) index.emplace(hash_block(oldb(b), bs), static_cast<uint32_t>(b));

  // 2. Describe every changed block: ZERO, COPY (exact match), else REPLACE
  // for now.
  std::vector<Planned> ordered;              // COPY and XOR
  std::vector<int8_t> kind(nblocks, 0);      // 0 same, kReplace, kZero, or ordered
  std::vector<int64_t> copy_src(nblocks, -1);
  for (uint64_t b = 0; b < nblocks; b++) {
    if (std::memcmp(oldb(b), newb(b), bs) == 0) continue;
    st.changed++;
    if (all_zero(newb(b), bs)) {
      kind[b] = kZero;
      continue;
    }
    auto it = index.find(hash_block(newb(b), bs));
    if (it != index.end() && std::memcmp(oldb(it->second), newb(b), bs) == 0) {
      kind[b] = kCopy;
      ordered.push_back({kCopy, b, it->second, {}});
      copy_src[b] = it->second;
      continue;
    }
    kind[b] = kReplace;
  }
  // XOR for the rest when it compresses clearly better: candidates from the
  // v1 generator's matcher (update/diff_v1_internal.h: anchors shared with
  // old data at any byte offset, the block's own place, COPY neighbours),
  // sizes estimated with fast zstd whatever the COW's algorithm.
  if (o.xor_ops && o.compression != Comp::None) {
    update::DiffV1Options vo;
    vo.progress = false;
    vo.block_size = bs;
    vo.threads = 1;
    update::v1gen::Input in{vo, old_img.data(), new_img.data(), bs, new_img.size(), old_img.size(), nblocks, nblocks,
                            nblocks, 1, 1, std::vector<uint8_t>(bs, 0)};
    update::v1gen::OldIndex ix;
    update::v1gen::index_old(in, ix);
    update::v1gen::Plan plan;
    plan.writer.assign(nblocks, -1);
    for (uint64_t b = 0; b < nblocks; b++)
      if (copy_src[b] >= 0) plan.writer[b] = static_cast<int32_t>(b);
    std::vector<uint8_t> est(ZSTD_compressBound(bs)), x(bs);
    auto estimate = [&](const uint8_t* p) {
      size_t n = ZSTD_compress(est.data(), est.size(), p, bs, 1);
      return ZSTD_isError(n) ? size_t{bs} : std::min<size_t>(n, bs);
    };
    for (uint64_t b = 0; b < nblocks; b++) {
      if (kind[b] != kReplace) continue;
      update::v1gen::GOp g;
      g.dest = b;
      auto sim = update::v1gen::find_similar(in, ix, plan, copy_src, g);
      const uint64_t off = update::v1gen::xor_source(in, sim, newb(b));
      if (off == UINT64_MAX || off + bs > old_img.size()) continue;
      for (uint32_t i = 0; i < bs; i++) x[i] = newb(b)[i] ^ old_img[off + i];
      if (estimate(x.data()) < estimate(newb(b)) * 3 / 4) {
        kind[b] = kXor;
        ordered.push_back({kXor, b, off, x});
      }
    }
  }

  // 3. A merge order for the ordered ops: an op reading block r must precede
  // the op writing r. Kahn's algorithm; a cycle is broken by turning one of
  // its ops into REPLACE (merged after every ordered op).
  std::vector<int32_t> writer_of(nblocks, -1);
  for (size_t i = 0; i < ordered.size(); i++) writer_of[ordered[i].new_block] = static_cast<int32_t>(i);
  auto reads = [&](const Planned& p) {
    std::vector<uint64_t> r;
    Op op;
    op.type = p.type;
    op.source = p.source;
    op_read_blocks(op, bs, r);
    return r;
  };
  std::vector<uint32_t> indeg(ordered.size(), 0);
  for (size_t i = 0; i < ordered.size(); i++)
    for (uint64_t r : reads(ordered[i])) {
      int32_t w = writer_of[r];
      if (w >= 0 && static_cast<size_t>(w) != i) indeg[w]++;
    }
  // Kahn's algorithm in waves: every op of a wave is ready when the wave
  // starts, so no op of a wave writes a block another one of it reads (that
  // writer would still wait for its reader); each wave is emitted in block
  // order. A merge takes a wave as one batch (one flush) with runs of
  // adjacent blocks, where a FIFO order would interleave dependent ops and
  // cut the batches short.
  std::vector<bool> done(ordered.size(), false), dropped(ordered.size(), false);
  std::vector<uint32_t> wave, next;
  for (uint32_t i = 0; i < ordered.size(); i++)
    if (!indeg[i]) wave.push_back(i);
  std::vector<uint32_t> order;
  size_t scan = 0;
  auto release = [&](uint32_t i, std::vector<uint32_t>& into) {
    for (uint64_t r : reads(ordered[i])) {
      int32_t w = writer_of[r];
      if (w >= 0 && static_cast<uint32_t>(w) != i && !done[w] && !dropped[w] && --indeg[w] == 0) into.push_back(w);
    }
  };
  while (order.size() + st.cycles_broken < ordered.size()) {
    if (wave.empty()) {
      while (done[scan] || dropped[scan]) scan++;
      dropped[scan] = true;  // break a cycle: this block becomes a REPLACE
      kind[ordered[scan].new_block] = kReplace;
      st.cycles_broken++;
      release(scan, wave);
      continue;
    }
    std::sort(wave.begin(), wave.end(),
              [&](uint32_t a, uint32_t b) { return ordered[a].new_block < ordered[b].new_block; });
    next.clear();
    for (uint32_t i : wave) {
      if (done[i] || dropped[i]) continue;
      done[i] = true;
      order.push_back(i);
    }
    for (uint32_t i : wave) release(i, next);
    wave.swap(next);
  }

  // 4. The ops in COW order: ordered ops in merge order, then REPLACE (units)
  // and ZERO ascending.
  std::vector<Emit> ops;
  std::vector<uint32_t> sequence;
  for (uint32_t i : order) {
    const Planned& p = ordered[i];
    Emit e{p.type, p.new_block, p.source, 0, {}};
    if (p.type == kXor) {
      UDM_ASSIGN_OR_RETURN(e.data, encode(o.compression, p.xor_data, o.version == 2, o.zstd_level));
      st.xor_payload += e.data.size();
      st.xor_ops++;
      if (p.source / bs == p.new_block || (p.source % bs && p.source / bs + 1 == p.new_block)) st.self_xor++;
    } else {
      st.copy++;
    }
    sequence.push_back(static_cast<uint32_t>(p.new_block));
    ops.push_back(std::move(e));
  }
  const uint32_t max_shift = o.version == 3 ? static_cast<uint32_t>(std::countr_zero(o.unit / bs)) : 0;
  for (uint64_t b = 0; b < nblocks;) {
    if (kind[b] == kZero) {
      ops.push_back({kZero, b, 0, 0, {}});
      st.zero++;
      b++;
      continue;
    }
    if (kind[b] != kReplace) {
      b++;
      continue;
    }
    uint64_t run = 1;
    while (b + run < nblocks && kind[b + run] == kReplace) run++;
    while (run) {
      uint32_t k = max_shift;
      while ((uint64_t{1} << k) > run) k--;
      Emit e{kReplace, b, 0, static_cast<uint8_t>(k), {}};
      const size_t n = static_cast<size_t>(uint64_t{bs} << k);
      UDM_ASSIGN_OR_RETURN(e.data, encode(o.compression, std::span<const uint8_t>(newb(b), n), o.version == 2, o.zstd_level));
      st.replace_payload += e.data.size();
      ops.push_back(std::move(e));
      st.replace_ops++;
      st.replace_blocks += uint64_t{1} << k;
      b += uint64_t{1} << k;
      run -= uint64_t{1} << k;
    }
  }
  st.sequence = sequence.size();
  const uint32_t scratch = st.self_xor ? kScratchBytes : 0;
  st.scratch = scratch;

  // 5. Lay the file out.
  std::vector<uint8_t> out;
  auto put = [&](uint64_t at, const void* p, size_t n) {
    if (out.size() < at + n) out.resize(static_cast<size_t>(at + n));
    std::memcpy(out.data() + at, p, n);
  };
  if (o.version == 3) {
    uint8_t h[kV3HeaderSize] = {};
    const uint64_t S = kV3HeaderSize + scratch, R = S + 4 * sequence.size(), O = R + 16 * 4, D = O + 16 * ops.size();
    put_le64(h, kMagic);
    put_le16(h + 8, 3);
    put_le16(h + 12, kV3HeaderSize);
    put_le16(h + 16, kV3OpSize);
    put_le32(h + 18, bs);
    put_le32(h + 34, scratch);
    put_le64(h + 38, sequence.size());
    put_le32(h + 50, 4);
    put_le64(h + 54, ops.size());
    put_le64(h + 62, ops.size());
    put_le32(h + 70, static_cast<uint32_t>(o.compression));
    put_le32(h + 74, o.unit);
    out.assign(static_cast<size_t>(D), 0);
    put(0, h, sizeof h);
    for (size_t i = 0; i < sequence.size(); i++) put_le32(out.data() + S + 4 * i, sequence[i]);
    uint64_t data = D;
    for (size_t i = 0; i < ops.size(); i++) {
      const Emit& e = ops[i];
      uint8_t r[16];
      put_le32(r, static_cast<uint32_t>(e.data.size()));
      put_le32(r + 4, static_cast<uint32_t>(e.new_block));
      uint64_t src = e.type == kReplace ? data : e.source;
      put_le64(r + 8, (uint64_t{e.type} << 60) | (uint64_t{e.unit_shift} << 57) | src);
      put(O + 16 * i, r, 16);
      if (!e.data.empty()) put(data, e.data.data(), e.data.size());
      data += e.data.size();
    }
  } else {
    const uint64_t N = o.cluster_ops;
    uint8_t h[kV2HeaderSize] = {};
    put_le64(h, kMagic);
    put_le16(h + 8, 2);
    put_le16(h + 12, kV2HeaderSize);
    put_le16(h + 14, kV2FooterSize);
    put_le16(h + 16, kV2OpSize);
    put_le32(h + 18, bs);
    put_le32(h + 22, static_cast<uint32_t>(N));
    put_le32(h + 34, scratch);
    out.assign(kV2HeaderSize + scratch, 0);
    put(0, h, sizeof h);
    uint64_t cluster = kV2HeaderSize + scratch, slot = 0, cdata = 0, num_ops = 0;
    auto record = [&](uint8_t type, uint8_t comp, uint16_t dlen, uint64_t nb, uint64_t src) {
      uint8_t r[kV2OpSize];
      r[0] = type;
      r[1] = comp;
      put_le16(r + 2, dlen);
      put_le64(r + 4, nb);
      put_le64(r + 12, src);
      put(cluster + kV2OpSize * slot, r, sizeof r);
      slot++;
      num_ops++;
    };
    auto end_cluster = [&]() {
      // CLUSTER op in the current slot; the next cluster starts after the data.
      const uint64_t skip = cdata + kV2OpSize * (N - slot - 1);
      record(kCluster, 0, 0, 0, skip);
      cluster = cluster + kV2OpSize * N + cdata;
      slot = 0;
      cdata = 0;
    };
    auto add = [&](uint8_t type, uint8_t comp, uint64_t nb, uint64_t src, const std::vector<uint8_t>& data) {
      const uint64_t at = cluster + kV2OpSize * N + cdata;
      if (type == kReplace || type == kSequence) src = at;
      record(type, comp, static_cast<uint16_t>(data.size()), nb, src);
      if (!data.empty()) put(at, data.data(), data.size());
      cdata += data.size();
      if (slot == N - 1) end_cluster();
    };
    const uint32_t per_seq = 2 * bs / 4;
    for (size_t i = 0; i < sequence.size(); i += per_seq) {
      const size_t n = std::min<size_t>(per_seq, sequence.size() - i);
      std::vector<uint8_t> d(4 * n);
      for (size_t j = 0; j < n; j++) put_le32(d.data() + 4 * j, sequence[i + j]);
      add(kSequence, 0, 0, 0, d);
    }
    const uint8_t comp = static_cast<uint8_t>(o.compression);
    for (const Emit& e : ops) add(e.type, (e.type == kReplace || e.type == kXor) ? comp : 0, e.new_block, e.source, e.data);
    // Finalize: an early CLUSTER op if this cluster holds data, then the footer.
    if (cdata) end_cluster();
    uint8_t f[kV2FooterSize] = {};
    f[0] = kFooter;
    put_le16(f + 2, 64);
    put_le64(f + 4, kV2OpSize * num_ops);
    put_le64(f + 12, num_ops);
    put(cluster + kV2OpSize * slot, f, sizeof f);
    out.resize(static_cast<size_t>(cluster + kV2OpSize * slot + kV2FooterSize));
  }
  st.cow_bytes = out.size();
  if (st_out) *st_out = st;
  return out;
}

Result<WriterStats> make_cow_file(const std::string& old_path, const std::string& new_path, const std::string& out_path,
                                  const WriterOptions& opts) {
  MappedFile a, b;  // holes of sparse images map as zero pages
  UDM_TRY(a.open(old_path));
  UDM_TRY(b.open(new_path));
  WriterStats st;
  UDM_ASSIGN_OR_RETURN(auto bytes, make_cow(a.bytes(), b.bytes(), opts, &st));
  const std::string tmp = out_path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("create " + tmp);
  // The scratch area (zeros right after the header) is left a hole: the
  // file reads the same, and takes 2 MiB less on disk.
  const size_t hs = opts.version == 3 ? kV3HeaderSize : kV2HeaderSize;
  const size_t hole_end = st.scratch ? hs + static_cast<size_t>(st.scratch) : 0;
  if (::ftruncate(fd, static_cast<off_t>(bytes.size())) != 0) {
    Status s = ErrnoStatus("truncate " + tmp);
    ::close(fd);
    return s;
  }
  size_t done = 0;
  while (done < bytes.size()) {
    if (hole_end && done == hs) done = hole_end;
    const size_t stop = hole_end && done < hs ? hs : bytes.size();
    ssize_t n = ::pwrite(fd, bytes.data() + done, stop - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      Status s = ErrnoStatus("write " + tmp);
      ::close(fd);
      return s;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return ErrnoStatus("sync " + tmp);
  if (::rename(tmp.c_str(), out_path.c_str()) != 0) return ErrnoStatus("rename to " + out_path);
  return st;
}

}  // namespace udm::acow
