// On-disk format of the bow (backup-on-write) log, kept in block 0 of the
// device while a checkpoint is active. Layout (all little-endian, explicit
// widths; compatible with the Android kernel's dm-bow 1.2 log on little-endian
// machines — see docs/bow.md):
//
//   off  size  field
//   0    u32   magic 0x00574F42 ("BOW\0")
//   4    u16   version 0x0100
//   6    u16   header size (28)
//   8    u32   block size in bytes (power of two, 512..65536)
//   12   u32   count of entries in this log block
//   16   u32   sequence (0 for the first log block, +1 per rollover)
//   20   u64   sector0: 512-byte sector where the live contents of block 0 are
//   28   24*n  entries: u64 source sector, u64 dest sector, u32 size (bytes),
//              u32 checksum
//   bs-4 u32   udm flags: 0, or 0x4D55 ("UM") in the high half with flag
//              bits in the low half (see below)
//
// An entry says "the `size` bytes that were at `source` before they were
// overwritten are saved at `dest`". Entry 0 of sequence 0 saves the original
// block 0; entry 0 of every later log block saves the previous (full) log
// block, so the log blocks form a chain. checksum is the CRC-32 (reflected
// polynomial 0xEDB88320, no pre/post inversion, i.e. the kernel's crc32_le)
// seeded with the source block number and run over the saved bytes; 0 means
// "not checked".
//
// udm's additions, invisible to readers of `count` entries (the kernel,
// Android's tools): the last 4 bytes of a log block lie beyond the room of
// the last possible entry for every block size (capacity = (bs - 28) / 24
// leaves 4 or 12 bytes) and are zero in a plain log. udm writes there
// 0x4D55 << 16 | flags:
//  * kFlagIntent: the last entry slot (capacity - 1, never used for entries
//    then) holds {source 0, dest = sector of the intent block, size = block
//    size, checksum 0}. Before each group commit writes copies into free
//    blocks, the intent block lists them (and log blocks saved, and new homes
//    of the live block 0); a target resuming after a power cut zeroes the
//    listed blocks the log does not name, so copies that never got logged do
//    not show through free space.
//  * kFlagCommitting: the commit rewrote block 0 with this flag first: from
//    then on the saved copies are being zeroed, so the log can no longer be
//    restored; a target created over such a device finishes the commit
//    instead (docs/bow.md, "Commit").
//
// Intent block: u32 magic kIntentMagic, u32 n, then n ranges of u64 start
// sector, u64 bytes (whole blocks, inside the device, never block 0). An
// all-zero block is an empty intent.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm::bow {

inline constexpr uint32_t kLogMagic = 0x00574F42;      // "BOW\0"
inline constexpr uint32_t kRestoringMagic = 0x00424F57;  // Android vold's partial restore ("WOB")
inline constexpr uint32_t kUdmFlagsTag = 0x4D550000;   // "UM" in the high half
inline constexpr uint32_t kFlagCommitting = 1;
inline constexpr uint32_t kFlagIntent = 2;
inline constexpr uint32_t kIntentMagic = 0x49574F42;   // "BOWI"
inline constexpr uint16_t kLogVersion = 0x0100;
inline constexpr uint16_t kHeaderSize = 28;
inline constexpr uint32_t kEntrySize = 24;
inline constexpr uint32_t kMinBlock = 512;
inline constexpr uint32_t kMaxBlock = 65536;

struct LogEntry {
  uint64_t source = 0;  // sectors
  uint64_t dest = 0;    // sectors
  uint32_t size = 0;    // bytes
  uint32_t checksum = 0;
  bool operator==(const LogEntry&) const = default;
};

struct LogBlock {
  uint32_t block_size = 4096;
  uint32_t sequence = 0;
  uint64_t sector0 = 0;
  std::vector<LogEntry> entries;
  bool committing = false;  // kFlagCommitting
  uint64_t intent = 0;      // kFlagIntent: sector of the intent block (0: none)
  bool operator==(const LogBlock&) const = default;
};

// Entries that fit in one log block of `block_size` bytes.
inline uint32_t log_capacity(uint32_t block_size) {
  return (block_size - kHeaderSize) / kEntrySize;
}
// Entries udm puts in one log block (the last slot holds the intent pointer).
inline uint32_t log_fill_limit(uint32_t block_size) { return log_capacity(block_size) - 1; }

// Ranges one intent block holds.
inline uint32_t intent_capacity(uint32_t block_size) { return (block_size - 8) / 16; }
struct IntentRange {
  uint64_t sector = 0;
  uint64_t bytes = 0;
  bool operator==(const IntentRange&) const = default;
};
std::vector<uint8_t> encode_intent(const std::vector<IntentRange>& ranges, uint32_t block_size);
// Validates like decode_log (EUCLEAN naming the range); all zero = empty.
Result<std::vector<IntentRange>> decode_intent(std::span<const uint8_t> data, uint32_t block_size,
                                               uint64_t device_bytes);

bool valid_block_size(uint64_t bs);

// Serialises into exactly block_size bytes (the tail is zero).
std::vector<uint8_t> encode_log(const LogBlock& log);

// True if the buffer starts with the bow magic (the caller then parses it).
bool has_log_magic(std::span<const uint8_t> data);

// Parses and validates a log block read from a device of `device_bytes`
// bytes: every header field, and every entry (aligned to the block size,
// inside the device, never touching block 0 except entry 0, which must save
// exactly block 0; non-zero sizes). `data` must hold at least the block.
// Errors are EUCLEAN with a message naming the field.
Result<LogBlock> decode_log(std::span<const uint8_t> data, uint64_t device_bytes);

// The entry checksum: the kernel's crc32_le (util/crc.h crc32_ieee_raw: CRC-32
// with the reflected polynomial, no pre/post inversion) seeded with the source
// block number. Over bytes read in pieces, continue with crc32_ieee_raw:
// entry_checksum(b, x + y) == crc32_ieee_raw(entry_checksum(b, x), y).
uint32_t entry_checksum(uint64_t source_block, std::span<const uint8_t> data);

}  // namespace udm::bow
