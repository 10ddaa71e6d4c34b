// dm-update diff format v0, bit-exact to seed 000 (docs/update-format.md):
//
//   offset 0   superblock (64 bytes, little-endian)
//                magic[8] "update\0\0", version u8 = 0, block_bits u8, pad1 u16,
//                chunk_blocks u32, compression[16] (NUL-terminated crypto API
//                name), dir_offset u64, dir_compressed_size u64, dir_n u64, pad2 u64
//   ...        compressed chunks (each: up to chunk_blocks changed blocks,
//              compressed together)
//   dir_offset the directory: dir_n 16-byte entries, compressed as one unit
//              {dest_lo u32, dest_hi u16, src_hi u16, src_lo u32, offset u32}
//              sorted by destination block; an entry says "destination block
//              `dest` is block `offset` of the chunk stored at byte `src`".
//              The last entry is a sentinel whose src is the end of the last
//              chunk; a chunk's compressed length is the next different src
//              minus its own.
//
// udm keeps the copy-back progress in pad2 (ignored by the seed's kernel
// code): a tag in the high 32 bits and the number of entries copied in the
// low 32 bits.
//
// Pure format code: bytes in, structs out (and back), no I/O. Reading a diff
// from a device, its chunks and writing the progress record: format_v0_io.h.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "update/codec.h"

namespace udm::update {

constexpr size_t kSuperblockSize = 64;
constexpr size_t kEntrySize = 16;
constexpr uint8_t kVersion0 = 0;
constexpr uint64_t kMaxDirEntries = 1ull << 26;     // 1 GiB of directory
constexpr uint64_t kMaxChunkBytes = 64ull << 20;    // decompressed chunk buffers stay sane
constexpr uint32_t kProgressTag = 0x504d4455;       // "UDMP"

struct Superblock {
  uint8_t version = kVersion0;
  uint8_t block_bits = 12;
  uint16_t pad1 = 0;
  uint32_t chunk_blocks = 16;
  std::string compression = "zstd";
  uint64_t dir_offset = 0;
  uint64_t dir_compressed_size = 0;
  uint64_t dir_n = 0;
  uint64_t pad2 = 0;
};

struct Entry {
  uint64_t dest = 0;    // destination block (48 bits)
  uint64_t src = 0;     // byte offset of the compressed chunk in the diff (48 bits)
  uint32_t offset = 0;  // block index inside the decompressed chunk
};

std::array<uint8_t, kSuperblockSize> encode_superblock(const Superblock& sb);
// Checks magic, version, block_bits, chunk_blocks, compression, dir_n.
Result<Superblock> decode_superblock(std::span<const uint8_t> bytes);
void encode_entry(uint8_t* out, const Entry& e);
Entry decode_entry(const uint8_t* in);

struct Chunk {
  uint64_t src = 0;
  uint64_t length = 0;       // compressed bytes
  uint32_t first_entry = 0;  // entries [first_entry, first_entry + n_entries)
  uint32_t n_entries = 0;
  uint32_t max_offset = 0;   // highest block offset used inside the chunk
};

// A validated diff: superblock, directory (without the sentinel) and chunks.
struct DiffIndex {
  Superblock sb;
  Algo algo = Algo::None;
  uint64_t file_size = 0;
  std::vector<Entry> entries;      // sorted by dest, sentinel excluded
  std::vector<uint32_t> chunk_of;  // entry index -> chunk index
  std::vector<Chunk> chunks;

  uint32_t block_size() const { return 1u << sb.block_bits; }
  uint64_t chunk_bytes() const { return uint64_t{sb.chunk_blocks} << sb.block_bits; }
  // Index of the entry for destination block `dest`, or -1.
  int64_t find(uint64_t dest) const;
  // Copy-back progress recorded in pad2 (entries copied), 0 if none.
  uint64_t recorded_progress() const;
};

// The superblock of a `file_size`-byte diff, checked, and where its
// directory lies (inside the file, after the superblock). The returned index
// has sb, algo and file_size; parse_v0_directory fills the rest.
Result<DiffIndex> parse_v0_superblock(std::span<const uint8_t> sb_bytes, uint64_t file_size);
// The compressed directory (sb.dir_compressed_size bytes read at
// sb.dir_offset): decompressed, every entry and chunk validated. Errors name
// the field or entry.
Status parse_v0_directory(DiffIndex& idx, std::span<const uint8_t> compressed_dir);
// A whole diff in memory: superblock + directory, validated (fuzzers, tests).
Result<DiffIndex> load_diff_bytes(std::span<const uint8_t> file);
// Stored chunk `c` (idx.chunks[c].length bytes) decompressed into `out`
// (size >= chunk_bytes()); checks it covers every block the directory uses.
Status decode_v0_chunk(const DiffIndex& idx, size_t c, std::span<const uint8_t> stored, std::span<uint8_t> out);
// The directory entries (sentinel included) as stored, before compression.
std::vector<uint8_t> encode_v0_directory(std::span<const Entry> entries);

uint64_t progress_pad2(uint64_t entries_done);
// Sets the progress record (pad2) in a copy of the diff's first sector.
void put_v0_progress(std::span<uint8_t> first_sector, uint64_t entries_done);

}  // namespace udm::update
