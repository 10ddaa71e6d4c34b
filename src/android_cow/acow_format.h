// Android's Virtual A/B COW format, versions 2 and 3 (docs/android-cow.md;
// the layout as ../shared/data/android-cow/README.md describes it).
//
// parse_cow() is pure: it reads a COW through a BlockDevice, validates every
// field it uses and returns the data operations (COPY, REPLACE, ZERO, XOR) in
// COW order, in one form for both versions, plus the sequence data, labels
// and header. It never trusts a length or an offset it has not checked
// against the file, so it is fuzzed as is (fuzz/android_cow/).
//
// build_merge_order() computes Android's merge order (sequence data honoured)
// and verify_merge_order() checks that it is safe to apply in place.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "device/block_device.h"
#include "util/status.h"

namespace udm::acow {

constexpr uint64_t kMagic = 0x436f77634f572121ull;
constexpr uint32_t kV2HeaderSize = 38, kV3HeaderSize = 78, kPrefixSize = 14;
constexpr uint32_t kV2OpSize = 20, kV3OpSize = 16, kV2FooterSize = 84;
constexpr uint32_t kMaxUnitShift = 6;  // compression unit = block_size << k, k <= 6
constexpr uint64_t kNumMergeOpsOffset = 26;  // u64 in both headers, bumped by the merge

enum OpType : uint8_t {
  kCopy = 1,
  kReplace = 2,
  kZero = 3,
  kLabel = 4,
  kCluster = 5,
  kXor = 6,
  kSequence = 7,
  kFooter = 255,
};
const char* op_name(uint8_t type);

enum class Comp : uint32_t { None = 0, Gz = 1, Brotli = 2, Lz4 = 3, Zstd = 4 };
const char* comp_name(Comp c);
Result<Comp> comp_from_name(const std::string& name);

struct Header {
  uint64_t magic = kMagic;
  uint16_t major = 0, minor = 0, header_size = 0, footer_size = 0, op_size = 0;
  uint32_t block_size = 0, cluster_ops = 0;
  uint64_t num_merge_ops = 0;
  uint32_t buffer_size = 0;
  // v3 only
  uint64_t sequence_data_count = 0;
  uint32_t resume_point_count = 0, resume_point_max = 0;
  uint64_t op_count = 0, op_count_max = 0;
  uint32_t compression_algorithm = 0, max_compression_size = 0;
};

// One data operation in the in-memory form shared by v2 and v3.
struct Op {
  uint8_t type = 0;        // kCopy, kReplace, kZero, kXor
  uint8_t unit_shift = 0;  // REPLACE covers 1 << unit_shift blocks (v3); 0 otherwise
  uint32_t data_length = 0;
  uint64_t new_block = 0;
  uint64_t source = 0;       // COPY: old block; XOR: byte offset in the old image; else 0
  uint64_t data_offset = 0;  // REPLACE/XOR: absolute offset of the payload in the COW
  uint64_t blocks() const { return uint64_t{1} << unit_shift; }
};

struct ResumePoint {
  uint64_t label = 0, op_index = 0;
};

struct CowFile {
  Header h;
  uint64_t file_size = 0;
  Comp compression = Comp::None;  // v3: header; v2: the ops' (uniform)
  uint32_t max_unit = 0;          // largest compression unit in bytes
  std::vector<Op> ops;            // data ops, COW order (up to the label, if one was asked for)
  std::vector<uint32_t> sequence; // merge sequence (new blocks), empty if none
  bool has_sequence = false;
  bool has_footer = false;        // v2 only
  std::optional<uint64_t> read_label;  // the label the file was read up to
  std::vector<uint64_t> labels;   // v2: LABEL ops read; v3: the valid resume points' labels
  std::vector<ResumePoint> resume_points;  // v3: the first min(count, max) entries
  // Every op record read (v2: metadata ops included), and per type.
  uint64_t n_records = 0, n_copy = 0, n_replace = 0, n_zero = 0, n_xor = 0, n_label = 0, n_cluster = 0,
           n_sequence = 0;
  uint64_t replace_blocks = 0;  // blocks covered by REPLACE ops
  uint64_t data_end = 0;        // end of the last byte the ops use
  uint32_t block_size() const { return h.block_size; }
  int version() const { return h.major == 3 ? 3 : 2; }
};

// Reads and validates a COW. label: read up to that label (required for a
// v2 file without a footer, as Android does).
Result<CowFile> parse_cow(BlockDevice& cow, std::optional<uint64_t> label = std::nullopt);

// Blocks an op reads in the old image (COPY: 1, XOR: 1 or 2 when unaligned).
// Appends to out.
void op_read_blocks(const Op& op, uint32_t block_size, std::vector<uint64_t>& out);

// Checks every op against the sizes of the old image (COPY/XOR sources) and
// of the view (targets), and that no two ops write the same block. Android's
// view and merge would disagree on such a file, udm refuses it.
Status check_ops(const CowFile& f, uint64_t base_bytes, uint64_t view_bytes);

// Android's merge order (README §6.3, user-space merge): indices into f.ops.
// Every op appears exactly once; errors for sequence data naming blocks no op
// writes or naming a block twice.
Result<std::vector<uint32_t>> build_merge_order(const CowFile& f);
// OK iff no op reads a block that an earlier op in `order` wrote.
Status verify_merge_order(const CowFile& f, const std::vector<uint32_t>& order);

// Decodes an op's payload (REPLACE: its unit; XOR: one block) from `cow`.
Result<std::vector<uint8_t>> read_payload(BlockDevice& cow, const CowFile& f, const Op& op);

}  // namespace udm::acow
