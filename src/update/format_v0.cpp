#include "update/format_v0.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "update/format.h"
#include "util/endian.h"

namespace udm::update {

std::array<uint8_t, kSuperblockSize> encode_superblock(const Superblock& sb) {
  std::array<uint8_t, kSuperblockSize> b{};
  std::memcpy(b.data(), kDiffMagic, 8);
  b[8] = sb.version;
  b[9] = sb.block_bits;
  put_le16(&b[10], sb.pad1);
  put_le32(&b[12], sb.chunk_blocks);
  std::memcpy(&b[16], sb.compression.data(), std::min<size_t>(sb.compression.size(), 15));
  put_le64(&b[32], sb.dir_offset);
  put_le64(&b[40], sb.dir_compressed_size);
  put_le64(&b[48], sb.dir_n);
  put_le64(&b[56], sb.pad2);
  return b;
}

Result<Superblock> decode_superblock(std::span<const uint8_t> b) {
  if (b.size() < kSuperblockSize)
    return Corrupt(fmt::format("diff is {} bytes, shorter than the 64-byte superblock", b.size()));
  if (!has_diff_magic(b)) return Corrupt("superblock magic: not an update diff (want \"update\\0\")");
  Superblock sb;
  sb.version = b[8];
  sb.block_bits = b[9];
  sb.pad1 = le16(&b[10]);
  sb.chunk_blocks = le32(&b[12]);
  sb.dir_offset = le64(&b[32]);
  sb.dir_compressed_size = le64(&b[40]);
  sb.dir_n = le64(&b[48]);
  sb.pad2 = le64(&b[56]);
  if (sb.version != kVersion0)
    return Corrupt(fmt::format("superblock version: {} is not supported (this reader knows 0)", sb.version));
  if (sb.block_bits < 9 || sb.block_bits >= 32)
    return Corrupt(fmt::format("superblock block_bits: {} (must be 9..31)", sb.block_bits));
  if (sb.chunk_blocks == 0) return Corrupt("superblock chunk_blocks: zero");
  uint64_t chunk_bytes = uint64_t{sb.chunk_blocks} << sb.block_bits;
  if (chunk_bytes > kMaxChunkBytes || chunk_bytes >= (1ull << 31))
    return Corrupt(fmt::format("superblock chunk_blocks: {} blocks of {} bytes is too large a chunk",
                               sb.chunk_blocks, 1u << sb.block_bits));
  const uint8_t* name = &b[16];
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(name, 0, 16));
  if (!nul) return Corrupt("superblock compression: name is not NUL-terminated");
  sb.compression.assign(reinterpret_cast<const char*>(name), static_cast<size_t>(nul - name));
  auto algo = algo_from_name(sb.compression);
  if (!algo.ok()) return Corrupt("superblock compression: " + algo.status().message());
  if (sb.dir_n < 1) return Corrupt("superblock dir_n: zero (the sentinel entry is mandatory)");
  if (sb.dir_n > kMaxDirEntries)
    return Corrupt(fmt::format("superblock dir_n: {} entries is more than udm accepts ({})", sb.dir_n, kMaxDirEntries));
  return sb;
}

void encode_entry(uint8_t* o, const Entry& e) {
  put_le32(o, static_cast<uint32_t>(e.dest));
  put_le16(o + 4, static_cast<uint16_t>(e.dest >> 32));
  put_le16(o + 6, static_cast<uint16_t>(e.src >> 32));
  put_le32(o + 8, static_cast<uint32_t>(e.src));
  put_le32(o + 12, e.offset);
}

Entry decode_entry(const uint8_t* i) {
  Entry e;
  e.dest = le32(i) | (uint64_t{le16(i + 4)} << 32);
  e.src = le32(i + 8) | (uint64_t{le16(i + 6)} << 32);
  e.offset = le32(i + 12);
  return e;
}

int64_t DiffIndex::find(uint64_t dest) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), dest,
                             [](const Entry& e, uint64_t d) { return e.dest < d; });
  if (it == entries.end() || it->dest != dest) return -1;
  return it - entries.begin();
}

uint64_t progress_pad2(uint64_t done) { return (uint64_t{kProgressTag} << 32) | (done & 0xffffffffu); }

uint64_t DiffIndex::recorded_progress() const {
  if ((sb.pad2 >> 32) != kProgressTag) return 0;
  uint64_t done = sb.pad2 & 0xffffffffu;
  return done <= entries.size() ? done : 0;
}

Result<DiffIndex> parse_v0_superblock(std::span<const uint8_t> sb_bytes, uint64_t file_size) {
  DiffIndex idx;
  idx.file_size = file_size;
  if (idx.file_size < kSuperblockSize)
    return Corrupt(fmt::format("diff is {} bytes, shorter than the 64-byte superblock", idx.file_size));
  UDM_ASSIGN_OR_RETURN(idx.sb, decode_superblock(sb_bytes));
  idx.algo = algo_from_name(idx.sb.compression).value();
  const Superblock& sb = idx.sb;
  if (sb.dir_offset < kSuperblockSize || sb.dir_offset > idx.file_size ||
      sb.dir_compressed_size > idx.file_size - sb.dir_offset)
    return Corrupt(fmt::format("superblock dir_offset/dir_compressed_size: directory [{}, +{}) is outside the {}-byte file",
                               sb.dir_offset, sb.dir_compressed_size, idx.file_size));
  return idx;
}

Status parse_v0_directory(DiffIndex& idx, std::span<const uint8_t> cdir) {
  const Superblock& sb = idx.sb;
  if (cdir.size() != sb.dir_compressed_size)
    return Invalid(fmt::format("parse_v0_directory: {} bytes given for a {}-byte directory", cdir.size(),
                               sb.dir_compressed_size));
  uint64_t dir_bytes = sb.dir_n * kEntrySize;
  std::vector<uint8_t> dir(dir_bytes);
  auto got = decompress(idx.algo, cdir, dir);
  if (!got.ok()) return Corrupt("directory: " + got.status().message());
  if (*got != dir_bytes)
    return Corrupt(fmt::format("directory: decompresses to {} bytes, dir_n says {}", *got, dir_bytes));
  // Entries, the sentinel last.
  std::vector<Entry> all(sb.dir_n);
  for (uint64_t i = 0; i < sb.dir_n; i++) all[i] = decode_entry(&dir[i * kEntrySize]);
  uint64_t n = sb.dir_n - 1;
  idx.entries.assign(all.begin(), all.begin() + static_cast<ptrdiff_t>(n));
  idx.chunk_of.resize(n);
  uint64_t chunk_limit = std::max<uint64_t>(2 * idx.chunk_bytes() + 65536, 1 << 20);
  for (uint64_t i = 0; i < n; i++) {
    const Entry& e = all[i];
    if (e.offset >= sb.chunk_blocks)
      return Corrupt(fmt::format("directory entry {}: offset {} is not below chunk_blocks {}", i, e.offset, sb.chunk_blocks));
    if (e.dest >= all[i + 1].dest)
      return Corrupt(fmt::format("directory entry {}: destination {} is not below the next entry's {}", i, e.dest, all[i + 1].dest));
    if (i == 0 || e.src != all[i - 1].src) {
      if (i > 0 && e.src < all[i - 1].src)
        return Corrupt(fmt::format("directory entry {}: chunk source {} goes backwards (chunks must follow the directory order)", i, e.src));
      Chunk c;
      c.src = e.src;
      c.first_entry = static_cast<uint32_t>(i);
      idx.chunks.push_back(c);
    }
    Chunk& c = idx.chunks.back();
    c.n_entries++;
    c.max_offset = std::max(c.max_offset, e.offset);
    idx.chunk_of[i] = static_cast<uint32_t>(idx.chunks.size() - 1);
  }
  const Entry& sentinel = all[n];
  for (size_t ci = 0; ci < idx.chunks.size(); ci++) {
    Chunk& c = idx.chunks[ci];
    uint64_t next = ci + 1 < idx.chunks.size() ? idx.chunks[ci + 1].src : sentinel.src;
    if (next <= c.src)
      return Corrupt(fmt::format("chunk at {}: the next source {} does not lie after it (sentinel entry src wrong?)", c.src, next));
    c.length = next - c.src;
    if (c.src < kSuperblockSize || next > idx.file_size)
      return Corrupt(fmt::format("chunk at {}: [{}, {}) is outside the {}-byte file", c.src, c.src, next, idx.file_size));
    if (c.src < sb.dir_offset + sb.dir_compressed_size && sb.dir_offset < next && sb.dir_compressed_size > 0)
      return Corrupt(fmt::format("chunk at {}: overlaps the directory at {}", c.src, sb.dir_offset));
    if (c.length > chunk_limit)
      return Corrupt(fmt::format("chunk at {}: compressed length {} is implausible for a {}-byte chunk", c.src, c.length, idx.chunk_bytes()));
    if (idx.algo == Algo::None && c.length > idx.chunk_bytes())
      return Corrupt(fmt::format("chunk at {}: stored length {} exceeds the chunk size", c.src, c.length));
  }
  return Status::Ok();
}

Result<DiffIndex> load_diff_bytes(std::span<const uint8_t> file) {
  UDM_ASSIGN_OR_RETURN(DiffIndex idx, parse_v0_superblock(file.first(std::min(file.size(), kSuperblockSize)), file.size()));
  UDM_TRY(parse_v0_directory(idx, file.subspan(idx.sb.dir_offset, idx.sb.dir_compressed_size)));
  return idx;
}

Status decode_v0_chunk(const DiffIndex& idx, size_t ci, std::span<const uint8_t> stored, std::span<uint8_t> out) {
  const Chunk& c = idx.chunks[ci];
  auto n = decompress(idx.algo, stored, out.subspan(0, idx.chunk_bytes()));
  if (!n.ok()) return n.status().context(fmt::format("chunk at {}", c.src));
  uint64_t need = (uint64_t{c.max_offset} + 1) * idx.block_size();
  if (*n < need)
    return Corrupt(fmt::format("chunk at {}: decompresses to {} bytes but the directory uses {}", c.src, *n, need));
  return Status::Ok();
}

std::vector<uint8_t> encode_v0_directory(std::span<const Entry> entries) {
  std::vector<uint8_t> dir(entries.size() * kEntrySize);
  for (size_t i = 0; i < entries.size(); i++) encode_entry(&dir[i * kEntrySize], entries[i]);
  return dir;
}

void put_v0_progress(std::span<uint8_t> sector, uint64_t done) { put_le64(&sector[56], progress_pad2(done)); }

}  // namespace udm::update
