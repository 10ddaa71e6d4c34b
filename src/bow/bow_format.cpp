#include "bow/bow_format.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

#include "util/crc.h"
#include "util/endian.h"

namespace udm::bow {

bool valid_block_size(uint64_t bs) {
  return bs >= kMinBlock && bs <= kMaxBlock && std::has_single_bit(bs);
}

uint32_t entry_checksum(uint64_t source_block, std::span<const uint8_t> data) {
  return crc32_ieee_raw(static_cast<uint32_t>(source_block), data.data(), data.size());
}

std::vector<uint8_t> encode_log(const LogBlock& log) {
  std::vector<uint8_t> out(log.block_size, 0);
  store_le<uint32_t>(&out[0], kLogMagic);
  store_le<uint16_t>(&out[4], kLogVersion);
  store_le<uint16_t>(&out[6], kHeaderSize);
  store_le<uint32_t>(&out[8], log.block_size);
  store_le<uint32_t>(&out[12], static_cast<uint32_t>(log.entries.size()));
  store_le<uint32_t>(&out[16], log.sequence);
  store_le<uint64_t>(&out[20], log.sector0);
  size_t p = kHeaderSize;
  for (const auto& e : log.entries) {
    store_le<uint64_t>(&out[p], e.source);
    store_le<uint64_t>(&out[p + 8], e.dest);
    store_le<uint32_t>(&out[p + 16], e.size);
    store_le<uint32_t>(&out[p + 20], e.checksum);
    p += kEntrySize;
  }
  uint32_t flags = (log.committing ? kFlagCommitting : 0) | (log.intent ? kFlagIntent : 0);
  if (flags) store_le<uint32_t>(&out[log.block_size - 4], kUdmFlagsTag | flags);
  if (log.intent) {
    size_t q = kHeaderSize + size_t{log_capacity(log.block_size) - 1} * kEntrySize;
    store_le<uint64_t>(&out[q], 0);
    store_le<uint64_t>(&out[q + 8], log.intent);
    store_le<uint32_t>(&out[q + 16], log.block_size);
    store_le<uint32_t>(&out[q + 20], 0);
  }
  return out;
}

bool has_log_magic(std::span<const uint8_t> data) {
  return data.size() >= 4 && load_le<uint32_t>(data.data()) == kLogMagic;
}

Result<LogBlock> decode_log(std::span<const uint8_t> d, uint64_t device_bytes) {
  if (d.size() < kHeaderSize) return Corrupt("bow log: block shorter than the header");
  uint32_t magic = load_le<uint32_t>(&d[0]);
  if (magic == kRestoringMagic)
    return Corrupt("bow log: block 0 is marked as a partially restored Android log (magic WOB)");
  if (magic != kLogMagic)
    return Corrupt(fmt::format("bow log: bad magic {:#010x} (expected {:#010x})", magic, kLogMagic));
  uint16_t version = load_le<uint16_t>(&d[4]);
  if (version != kLogVersion)
    return Corrupt(fmt::format("bow log: unsupported version {:#06x}", version));
  uint16_t hsize = load_le<uint16_t>(&d[6]);
  if (hsize != kHeaderSize) return Corrupt(fmt::format("bow log: header size {} (expected 28)", hsize));
  LogBlock log;
  log.block_size = load_le<uint32_t>(&d[8]);
  if (!valid_block_size(log.block_size))
    return Corrupt(fmt::format("bow log: block size {} is not a power of two in 512..65536",
                               log.block_size));
  if (d.size() < log.block_size)
    return Corrupt(fmt::format("bow log: block size {} exceeds the {} bytes read", log.block_size,
                               d.size()));
  if (device_bytes < 2ull * log.block_size)
    return Corrupt(fmt::format("bow log: device of {} bytes is too small for block size {}",
                               device_bytes, log.block_size));
  uint32_t count = load_le<uint32_t>(&d[12]);
  if (count == 0) return Corrupt("bow log: no entries (entry 0 must save the previous block 0)");
  if (count > log_capacity(log.block_size))
    return Corrupt(fmt::format("bow log: count {} exceeds the {} entries a {}-byte block holds",
                               count, log_capacity(log.block_size), log.block_size));
  log.sequence = load_le<uint32_t>(&d[16]);
  log.sector0 = load_le<uint64_t>(&d[20]);
  const uint64_t bsec = log.block_size / 512;
  const uint64_t dev_sectors = device_bytes / 512;
  const uint64_t whole_sectors = device_bytes / log.block_size * bsec;  // whole blocks only
  if (log.sector0 == 0 || log.sector0 % bsec != 0 || log.sector0 >= whole_sectors)
    return Corrupt(fmt::format("bow log: sector0 {} is not a block inside the device", log.sector0));
  (void)dev_sectors;
  uint32_t mark = load_le<uint32_t>(&d[log.block_size - 4]);
  if (mark != 0 && ((mark & 0xffff0000u) != kUdmFlagsTag ||
                    (mark & 0xffffu & ~(kFlagCommitting | kFlagIntent)) != 0))
    return Corrupt(fmt::format("bow log: last 4 bytes are {:#010x} (expected 0 or udm's flags "
                               "{:#010x} | 1 (committing) | 2 (intent))",
                               mark, kUdmFlagsTag));
  log.committing = mark & kFlagCommitting;
  if (mark & kFlagIntent) {
    if (count > log_fill_limit(log.block_size))
      return Corrupt(fmt::format("bow log: count {} leaves no slot for the intent pointer", count));
    size_t q = kHeaderSize + size_t{log_capacity(log.block_size) - 1} * kEntrySize;
    uint64_t src = load_le<uint64_t>(&d[q]), dst = load_le<uint64_t>(&d[q + 8]);
    uint32_t sz = load_le<uint32_t>(&d[q + 16]), ck = load_le<uint32_t>(&d[q + 20]);
    if (src != 0 || sz != log.block_size || ck != 0 || dst == 0 || dst % bsec != 0 ||
        dst >= whole_sectors)
      return Corrupt(fmt::format("bow log: bad intent pointer (source {}, dest {}, size {}, "
                                 "checksum {})",
                                 src, dst, sz, ck));
    log.intent = dst;
  }
  size_t p = kHeaderSize;
  for (uint32_t i = 0; i < count; i++, p += kEntrySize) {
    LogEntry e;
    e.source = load_le<uint64_t>(&d[p]);
    e.dest = load_le<uint64_t>(&d[p + 8]);
    e.size = load_le<uint32_t>(&d[p + 16]);
    e.checksum = load_le<uint32_t>(&d[p + 20]);
    auto bad = [&](const char* what) {
      return Corrupt(fmt::format("bow log: sequence {} entry {} (source {}, dest {}, size {}): {}",
                                 log.sequence, i, e.source, e.dest, e.size, what));
    };
    if (e.size == 0 || e.size % log.block_size != 0) return bad("size is not a whole number of blocks");
    if (e.source % bsec != 0 || e.dest % bsec != 0) return bad("sector not aligned to the block size");
    uint64_t nsec = e.size / 512;
    if (e.source >= whole_sectors || nsec > whole_sectors - e.source)
      return bad("source range runs past the end of the device");
    if (e.dest >= whole_sectors || nsec > whole_sectors - e.dest)
      return bad("dest range runs past the end of the device");
    if (e.dest == 0) return bad("dest is block 0 (the log itself)");
    if (i == 0) {
      if (e.source != 0 || e.size != log.block_size) return bad("entry 0 must save exactly block 0");
    } else if (e.source == 0) {
      return bad("only entry 0 may save block 0");
    }
    if (e.source < e.dest ? e.source + nsec > e.dest : e.dest + nsec > e.source)
      return bad("source and dest overlap");
    log.entries.push_back(e);
  }
  return log;
}

std::vector<uint8_t> encode_intent(const std::vector<IntentRange>& ranges, uint32_t block_size) {
  std::vector<uint8_t> out(block_size, 0);
  store_le<uint32_t>(&out[0], kIntentMagic);
  store_le<uint32_t>(&out[4], static_cast<uint32_t>(ranges.size()));
  size_t p = 8;
  for (const auto& r : ranges) {
    store_le<uint64_t>(&out[p], r.sector);
    store_le<uint64_t>(&out[p + 8], r.bytes);
    p += 16;
  }
  return out;
}

Result<std::vector<IntentRange>> decode_intent(std::span<const uint8_t> d, uint32_t block_size,
                                               uint64_t device_bytes) {
  std::vector<IntentRange> out;
  if (d.size() < block_size) return Corrupt("bow intent: block shorter than the block size");
  if (std::all_of(d.begin(), d.begin() + block_size, [](uint8_t x) { return x == 0; })) return out;
  uint32_t magic = load_le<uint32_t>(&d[0]), n = load_le<uint32_t>(&d[4]);
  if (magic != kIntentMagic)
    return Corrupt(fmt::format("bow intent: bad magic {:#010x} (expected {:#010x})", magic,
                               kIntentMagic));
  if (n > intent_capacity(block_size))
    return Corrupt(fmt::format("bow intent: {} ranges, a {}-byte block holds {}", n, block_size,
                               intent_capacity(block_size)));
  const uint64_t bsec = block_size / 512, whole = device_bytes / block_size * bsec;
  for (uint32_t i = 0; i < n; i++) {
    IntentRange r{load_le<uint64_t>(&d[8 + 16 * i]), load_le<uint64_t>(&d[16 + 16 * i])};
    if (r.sector == 0 || r.sector % bsec != 0 || r.bytes == 0 || r.bytes % block_size != 0 ||
        r.sector >= whole || r.bytes / 512 > whole - r.sector)
      return Corrupt(fmt::format("bow intent: range {} (sector {}, {} bytes) is not whole blocks "
                                 "inside the device past block 0",
                                 i, r.sector, r.bytes));
    out.push_back(r);
  }
  return out;
}

}  // namespace udm::bow
