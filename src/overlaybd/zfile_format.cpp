#include "overlaybd/zfile_format.h"

#include <fmt/format.h>
#include <lz4.h>
#include <zstd.h>

#include <cstring>
#include <memory>

#include "util/crc.h"
#include "util/endian.h"

namespace udm::obd {
namespace {

constexpr uint8_t kMagic0[8] = {'Z', 'F', 'i', 'l', 'e', 0, 1, 0};
constexpr uint8_t kMagic1[16] = {0x74, 0x75, 0x6A, 0x69, 0x2E, 0x79, 0x79, 0x66,
                                 0x40, 0x41, 0x6C, 0x69, 0x62, 0x61, 0x62, 0x61};

uint32_t header_digest(std::span<const uint8_t> buf) {
  uint8_t copy[kZFileHeaderSize];
  std::memcpy(copy, buf.data(), kZFileHeaderSize);
  std::memset(copy + 28, 0, 4);
  return crc32c_raw(0, copy, sizeof copy);
}

bool valid_block_size(uint32_t bs) {
  return bs >= 512 && bs <= (1u << 20) && (bs & (bs - 1)) == 0;
}

}  // namespace

bool is_zfile_magic(std::span<const uint8_t> buf) {
  // magic0 alone decides "this is meant to be a ZFile"; parse_zfile_header
  // then reports a damaged magic1 by name.
  return buf.size() >= 8 && std::memcmp(buf.data(), kMagic0, 8) == 0;
}

Result<ZFileHeader> parse_zfile_header(std::span<const uint8_t> buf, const char* what) {
  if (buf.size() < kZFileHeaderSize)
    return Corrupt(fmt::format("zfile {}: truncated ({} bytes)", what, buf.size()));
  if (std::memcmp(buf.data(), kMagic0, 8) != 0)
    return Corrupt(fmt::format("zfile {}: bad magic0", what));
  if (std::memcmp(buf.data() + 8, kMagic1, 16) != 0)
    return Corrupt(fmt::format("zfile {}: bad magic1", what));
  const uint8_t* p = buf.data();
  uint32_t size = le32(p + 24);
  if (size != kZFileStructSize)
    return Corrupt(fmt::format("zfile {}: field size is {}, expected 96", what, size));
  ZFileHeader h;
  h.digest = le32(p + 28);
  h.flags = le64(p + 32);
  h.index_offset = le64(p + 40);
  h.index_size = le64(p + 48);
  h.original_file_size = le64(p + 56);
  h.index_crc = le32(p + 64);
  h.block_size = le32(p + 72);
  h.algo = p[76];
  h.level = p[77];
  h.use_dict = p[78];
  h.dict_size = le32(p + 84);
  h.verify = p[88];
  if (h.flags >> 6)
    return Corrupt(fmt::format("zfile {}: field flags has unknown bits 0x{:x}", what, h.flags));
  if (h.has(kZfDigest)) {
    uint32_t d = header_digest(buf);
    if (d != h.digest)
      return Corrupt(fmt::format("zfile {}: field digest mismatch (stored 0x{:08x}, computed 0x{:08x})",
                                 what, h.digest, d));
  }
  if (!h.has(kZfIsDataFile)) return Corrupt(fmt::format("zfile {}: field flags lacks is_data_file", what));
  if (h.has(kZfIndexCompressed))
    return Corrupt(fmt::format("zfile {}: field flags has index_compressed (unsupported)", what));
  if (!valid_block_size(h.block_size))
    return Corrupt(fmt::format("zfile {}: field block_size {} invalid", what, h.block_size));
  if (h.algo != 1 && h.algo != 2)
    return Corrupt(fmt::format("zfile {}: field algo {} unsupported (1=lz4, 2=zstd)", what, h.algo));
  if (h.use_dict != 0 || h.dict_size != 0)
    return Corrupt(fmt::format("zfile {}: field use_dict/dict_size set (dictionaries unsupported)", what));
  if (h.verify > 1) return Corrupt(fmt::format("zfile {}: field verify is {}", what, h.verify));
  return h;
}

void encode_zfile_header(const ZFileHeader& h, std::span<uint8_t> out) {
  std::memset(out.data(), 0, kZFileHeaderSize);
  uint8_t* p = out.data();
  std::memcpy(p, kMagic0, 8);
  std::memcpy(p + 8, kMagic1, 16);
  put_le32(p + 24, kZFileStructSize);
  put_le64(p + 32, h.flags);
  put_le64(p + 40, h.index_offset);
  put_le64(p + 48, h.index_size);
  put_le64(p + 56, h.original_file_size);
  put_le32(p + 64, h.index_crc);
  put_le32(p + 72, h.block_size);
  p[76] = h.algo;
  p[77] = h.level;
  p[78] = h.use_dict;
  put_le32(p + 84, h.dict_size);
  p[88] = h.verify;
  if (h.flags & kZfDigest) put_le32(p + 28, header_digest(out));
}

Result<ZFileHeader> zfile_final_fields(const ZFileHeader& header, const ZFileHeader* trailer,
                                       uint64_t file_size) {
  if (!header.has(kZfIsHeader)) return Corrupt("zfile header: field flags lacks is_header");
  ZFileHeader f;
  const char* src = "header";
  if (header.has(kZfHeaderOverwrite)) {
    f = header;
  } else {
    if (!trailer) return Corrupt("zfile: trailer missing");
    if (trailer->has(kZfIsHeader)) return Corrupt("zfile trailer: field flags has is_header");
    if (!trailer->has(kZfSealed)) return Corrupt("zfile trailer: field flags lacks sealed");
    f = *trailer;
    src = "trailer";
  }
  if (file_size < 2 * kZFileHeaderSize) return Corrupt("zfile: file too small");
  uint64_t trailer_off = file_size - kZFileHeaderSize;
  if (f.index_offset < kZFileHeaderSize + f.dict_size || f.index_offset > trailer_off)
    return Corrupt(fmt::format("zfile {}: field index_offset {} outside the file", src, f.index_offset));
  if (f.index_size > kZFileMaxIndexEntries || f.index_size * 4 > trailer_off - f.index_offset)
    return Corrupt(fmt::format("zfile {}: field index_size {} too large", src, f.index_size));
  uint64_t want = f.original_file_size / f.block_size + (f.original_file_size % f.block_size != 0);
  if (want != f.index_size)
    return Corrupt(fmt::format("zfile {}: field original_file_size {} needs {} blocks, index_size is {}",
                               src, f.original_file_size, want, f.index_size));
  return f;
}

Result<ZFileLayout> zfile_build_layout(const ZFileHeader& fin, std::span<const uint8_t> index,
                                       uint64_t file_size) {
  if (index.size() != fin.index_size * 4) return Corrupt("zfile index: truncated");
  if (fin.has(kZfDigest)) {
    uint32_t c = crc32c_raw(0, index.data(), index.size());
    if (c != fin.index_crc)
      return Corrupt(fmt::format("zfile: field index_crc mismatch (stored 0x{:08x}, computed 0x{:08x})",
                                 fin.index_crc, c));
  }
  ZFileLayout l;
  l.h = fin;
  l.starts.resize(fin.index_size + 1);
  uint64_t pos = kZFileHeaderSize + fin.dict_size;
  // A block expands to at most block_size; LZ4/zstd worst-case growth bounds its stored size.
  uint64_t max_len = fin.block_size + fin.block_size / 128 + 1024;
  for (uint64_t i = 0; i < fin.index_size; i++) {
    uint32_t len = le32(index.data() + 4 * i);
    if (len == 0 || (fin.verify && len <= 4) || len > max_len)
      return Corrupt(fmt::format("zfile index: entry {} has invalid length {}", i, len));
    l.starts[i] = pos;
    pos += len;
    if (pos > fin.index_offset)
      return Corrupt(fmt::format("zfile index: block {} ends past index_offset", i));
  }
  if (pos != fin.index_offset)
    return Corrupt(fmt::format("zfile index: blocks end at {}, index_offset is {}", pos, fin.index_offset));
  l.starts[fin.index_size] = pos;
  (void)file_size;
  return l;
}

Status zfile_decode_block(const ZFileHeader& h, uint64_t blk, std::span<const uint8_t> stored,
                          std::span<uint8_t> out) {
  std::span<const uint8_t> payload = stored;
  if (h.verify) {
    if (stored.size() <= 4) return Corrupt(fmt::format("zfile block {}: too short", blk));
    payload = stored.first(stored.size() - 4);
    uint32_t want = le32(stored.data() + stored.size() - 4);
    uint32_t got = crc32c_raw(kZFileBlockCrcSeed, payload.data(), payload.size());
    if (want != got)
      return Corrupt(fmt::format("zfile block {}: CRC mismatch (stored 0x{:08x}, computed 0x{:08x})",
                                 blk, want, got));
  }
  if (h.algo == 1) {
    int n = LZ4_decompress_safe(reinterpret_cast<const char*>(payload.data()),
                                reinterpret_cast<char*>(out.data()), static_cast<int>(payload.size()),
                                static_cast<int>(out.size()));
    if (n < 0 || static_cast<size_t>(n) != out.size())
      return Corrupt(fmt::format("zfile block {}: lz4 decode failed ({} of {} bytes)", blk, n, out.size()));
    return Status::Ok();
  }
  if (h.algo == 2) {
    thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> ctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
    size_t n = ZSTD_decompressDCtx(ctx.get(), out.data(), out.size(), payload.data(), payload.size());
    if (ZSTD_isError(n) || n != out.size())
      return Corrupt(fmt::format("zfile block {}: zstd decode failed ({})", blk,
                                 ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short block"));
    return Status::Ok();
  }
  return Corrupt(fmt::format("zfile: field algo {} unsupported", h.algo));
}

Status zfile_encode_block(ZAlgo algo, bool verify, std::span<const uint8_t> in,
                          std::vector<uint8_t>& out) {
  size_t cap = algo == ZAlgo::kLz4 ? LZ4_compressBound(static_cast<int>(in.size()))
                                   : ZSTD_compressBound(in.size());
  out.resize(cap + 4);
  size_t n;
  if (algo == ZAlgo::kLz4) {
    int r = LZ4_compress_default(reinterpret_cast<const char*>(in.data()),
                                 reinterpret_cast<char*>(out.data()), static_cast<int>(in.size()),
                                 static_cast<int>(cap));
    if (r <= 0) return IoError("lz4 compression failed");
    n = static_cast<size_t>(r);
  } else {
    thread_local std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> ctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
    n = ZSTD_compressCCtx(ctx.get(), out.data(), cap, in.data(), in.size(), 3);
    if (ZSTD_isError(n)) return IoError(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
  }
  if (verify) {
    put_le32(out.data() + n, crc32c_raw(kZFileBlockCrcSeed, out.data(), n));
    n += 4;
  }
  out.resize(n);
  return Status::Ok();
}

}  // namespace udm::obd
