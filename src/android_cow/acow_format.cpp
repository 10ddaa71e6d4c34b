#include "android_cow/acow_format.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "android_cow/acow_codec.h"
#include "util/endian.h"

namespace udm::acow {

const char* op_name(uint8_t t) {
  switch (t) {
    case kCopy: return "COPY";
    case kReplace: return "REPLACE";
    case kZero: return "ZERO";
    case kLabel: return "LABEL";
    case kCluster: return "CLUSTER";
    case kXor: return "XOR";
    case kSequence: return "SEQUENCE";
    case kFooter: return "FOOTER";
  }
  return "unknown";
}

const char* comp_name(Comp c) {
  switch (c) {
    case Comp::None: return "none";
    case Comp::Gz: return "gz";
    case Comp::Brotli: return "brotli";
    case Comp::Lz4: return "lz4";
    case Comp::Zstd: return "zstd";
  }
  return "unknown";
}

Result<Comp> comp_from_name(const std::string& n) {
  if (n == "none") return Comp::None;
  if (n == "gz") return Comp::Gz;
  if (n == "brotli") return Comp::Brotli;
  if (n == "lz4") return Comp::Lz4;
  if (n == "zstd") return Comp::Zstd;
  return Invalid("unknown compression '" + n + "' (want none, gz, brotli, lz4 or zstd)");
}

namespace {

// Sequential reads of small records through a 1 MiB window.
class Reader {
 public:
  explicit Reader(BlockDevice& d) : d_(d), size_(d.size()) {}
  Status read(uint64_t off, void* out, size_t n) {
    if (off > size_ || n > size_ - off)
      return Corrupt(fmt::format("truncated: {} bytes at {} past the end of the file ({} bytes)", n, off, size_));
    if (n > kWindow) return d_.read_exact(off, out, n);
    if (off < win_off_ || off + n > win_off_ + win_.size()) {
      win_off_ = off;
      win_.resize(static_cast<size_t>(std::min<uint64_t>(kWindow, size_ - off)));
      UDM_TRY(d_.read(off, win_));
    }
    std::memcpy(out, win_.data() + (off - win_off_), n);
    return Status::Ok();
  }
  uint64_t size() const { return size_; }

 private:
  static constexpr size_t kWindow = 1 << 20;
  BlockDevice& d_;
  uint64_t size_;
  uint64_t win_off_ = 0;
  std::vector<uint8_t> win_;
};

bool pow2(uint64_t v) { return v && !(v & (v - 1)); }

Status parse_header(Reader& r, Header& h) {
  uint8_t b[kV3HeaderSize] = {};
  if (r.size() < kPrefixSize) return Corrupt(fmt::format("truncated: {} bytes, shorter than the COW header", r.size()));
  UDM_TRY(r.read(0, b, kPrefixSize));
  h.magic = le64(b);
  if (h.magic != kMagic) return Corrupt(fmt::format("bad magic {:#018x}: not an Android COW file", h.magic));
  h.major = le16(b + 8);
  h.minor = le16(b + 10);
  h.header_size = le16(b + 12);
  if (h.header_size > kV3HeaderSize || h.header_size < kV2HeaderSize)
    return Corrupt(fmt::format("header_size {} (want 38 for v2, 78 for v3)", h.header_size));
  UDM_TRY(r.read(0, b, h.header_size));
  h.footer_size = le16(b + 14);
  h.op_size = le16(b + 16);
  h.block_size = le32(b + 18);
  h.cluster_ops = le32(b + 22);
  h.num_merge_ops = le64(b + 26);
  h.buffer_size = le32(b + 34);
  if (h.major == 1 || h.major == 2) {
    if (h.header_size != kV2HeaderSize) return Corrupt(fmt::format("v{} header_size {} (want 38)", h.major, h.header_size));
    if (h.footer_size != kV2FooterSize) return Corrupt(fmt::format("v2 footer_size {} (want 84)", h.footer_size));
    if (h.op_size != kV2OpSize) return Corrupt(fmt::format("v2 op_size {} (want 20)", h.op_size));
    if (h.cluster_ops == 1) return Corrupt("v2 cluster_ops 1 (a cluster needs room for its CLUSTER op)");
    if (h.minor != 0) return Corrupt(fmt::format("unsupported version {}.{}", h.major, h.minor));
    if (h.major == 1) h.buffer_size = 0;
  } else if (h.major == 3) {
    if (h.minor != 0) return Corrupt(fmt::format("unsupported version {}.{}", h.major, h.minor));
    if (h.header_size != kV3HeaderSize) return Corrupt(fmt::format("v3 header_size {} (want 78)", h.header_size));
    if (h.footer_size != 0) return Corrupt(fmt::format("v3 footer_size {} (want 0)", h.footer_size));
    if (h.op_size != kV3OpSize) return Corrupt(fmt::format("v3 op_size {} (want 16)", h.op_size));
    if (h.cluster_ops != 0) return Corrupt(fmt::format("v3 cluster_ops {} (want 0)", h.cluster_ops));
    h.sequence_data_count = le64(b + 38);
    h.resume_point_count = le32(b + 46);
    h.resume_point_max = le32(b + 50);
    h.op_count = le64(b + 54);
    h.op_count_max = le64(b + 62);
    h.compression_algorithm = le32(b + 70);
    h.max_compression_size = le32(b + 74);
  } else {
    return Corrupt(fmt::format("unsupported version {}.{}", h.major, h.minor));
  }
  if (!pow2(h.block_size) || h.block_size < 512 || h.block_size > 65536)
    return Corrupt(fmt::format("block_size {} (want a power of two, 512..65536)", h.block_size));
  return Status::Ok();
}

// The data op's fields common to both versions; checks what both require.
Status check_data_op(const Op& op, uint32_t bs, uint64_t file_size, uint64_t idx) {
  if (op.type == kReplace || op.type == kXor) {
    if (op.data_length == 0) return Corrupt(fmt::format("op {}: {} without data", idx, op_name(op.type)));
    if (op.data_offset > file_size || op.data_length > file_size - op.data_offset)
      return Corrupt(fmt::format("truncated: op {} ({} block {}): {} data bytes at {} past the end of the file ({} bytes)",
                                 idx, op_name(op.type), op.new_block, op.data_length, op.data_offset, file_size));
  }
  if (op.type == kXor && op.source > (uint64_t{1} << 48))
    return Corrupt(fmt::format("op {}: XOR source {} does not fit in 48 bits", idx, op.source));
  if (op.type == kCopy && op.source >= (uint64_t{1} << 48))
    return Corrupt(fmt::format("op {}: COPY source {} does not fit in 48 bits", idx, op.source));
  return Status::Ok();
}

void count(CowFile& f, const Op& op) {
  switch (op.type) {
    case kCopy: f.n_copy++; break;
    case kReplace: f.n_replace++; f.replace_blocks += op.blocks(); break;
    case kZero: f.n_zero++; break;
    case kXor: f.n_xor++; break;
  }
}

Status parse_v2(Reader& r, CowFile& f, std::optional<uint64_t> label) {
  const Header& h = f.h;
  const uint64_t N = h.cluster_ops, size = r.size();
  const uint64_t p0 = uint64_t{h.header_size} + h.buffer_size;
  uint64_t pos = p0, data_pos = p0 + (N ? kV2OpSize * N : kV2OpSize);
  bool have_comp = false;
  bool label_found = false;
  uint64_t records = 0;
  f.max_unit = h.block_size;
  while (true) {
    if (pos > size || size - pos < kV2OpSize) {
      if (label) break;  // cut-off file read up to a label: checked below
      return Corrupt(fmt::format("truncated: no footer (op {} at offset {} is past the end, file {} bytes); "
                                 "a COW without a footer can only be read up to a label",
                                 records, pos, size));
    }
    uint8_t b[kV2OpSize];
    UDM_TRY(r.read(pos, b, kV2OpSize));
    const uint8_t type = b[0], comp = b[1];
    const uint16_t dlen = le16(b + 2);
    const uint64_t nb = le64(b + 4), src = le64(b + 12);
    if (type == kFooter) {
      uint8_t fb[kV2FooterSize];
      UDM_TRY(r.read(pos, fb, kV2FooterSize));
      const uint64_t ops_size = le64(fb + 4), num_ops = le64(fb + 12);
      if (num_ops != records || ops_size != num_ops * kV2OpSize)
        return Corrupt(fmt::format("footer at {}: num_ops {} ops_size {}, but {} ops precede it", pos, num_ops,
                                   ops_size, records));
      f.has_footer = true;
      f.data_end = std::max(f.data_end, pos + kV2FooterSize);
      break;
    }
    const uint64_t idx = records++;
    f.n_records = records;
    uint64_t next_pos, next_data = data_pos;
    if (type == kCluster) {
      if (N == 0) return Corrupt(fmt::format("op {}: CLUSTER op in a file without clusters", idx));
      if (src > size) return Corrupt(fmt::format("op {}: CLUSTER skips {} bytes, past the end of the file", idx, src));
      next_pos = pos + kV2OpSize + src;
      next_data = data_pos + kV2OpSize * N;
      f.n_cluster++;
    } else {
      if (type == 0 && !label)
        return Corrupt(fmt::format("op {} at offset {}: empty op slot and no footer (the writer was cut off?); "
                                   "such a file can only be read up to a label",
                                   idx, pos));
      if (label && (type == 0 || (type > kSequence && type != kFooter)))
        break;  // the end of what was written, before the label: "not found" below
      if (type != kCopy && type != kReplace && type != kZero && type != kLabel && type != kXor && type != kSequence)
        return Corrupt(fmt::format("op {} at offset {}: unknown op type {}", idx, pos, type));
      next_pos = pos + kV2OpSize + ((N == 0 && (type == kReplace || type == kXor)) ? dlen : 0);
      next_data = data_pos + dlen + (N == 0 ? kV2OpSize : 0);
    }
    if (type == kLabel) {
      f.n_label++;
      f.labels.push_back(src);
      if (label && src == *label) {
        label_found = true;
        f.data_end = std::max(f.data_end, pos + kV2OpSize);
        break;
      }
    } else if (type == kSequence) {
      f.n_sequence++;
      if (dlen % 4) return Corrupt(fmt::format("op {}: SEQUENCE data_length {} is not a multiple of 4", idx, dlen));
      if (src > size || dlen > size - src)
        return Corrupt(fmt::format("truncated: op {}: SEQUENCE data ({} bytes at {}) past the end of the file", idx, dlen, src));
      std::vector<uint8_t> d(dlen);
      UDM_TRY(r.read(src, d.data(), dlen));
      for (size_t i = 0; i < dlen; i += 4) f.sequence.push_back(le32(d.data() + i));
      f.has_sequence = true;
      f.data_end = std::max(f.data_end, src + dlen);
    } else if (type != kCluster) {
      Op op;
      op.type = type;
      op.data_length = dlen;
      op.new_block = nb;
      if (nb > UINT32_MAX) return Corrupt(fmt::format("op {}: new_block {} does not fit in 32 bits", idx, nb));
      if (type == kCopy || type == kXor) op.source = src;
      if (type == kReplace) op.data_offset = src;
      if (type == kXor) op.data_offset = data_pos;
      if (type == kReplace || type == kXor) {
        if (comp > static_cast<uint8_t>(Comp::Zstd)) return Corrupt(fmt::format("op {}: unknown compression {}", idx, comp));
        if (!have_comp) {
          f.compression = static_cast<Comp>(comp);
          have_comp = true;
        } else if (static_cast<Comp>(comp) != f.compression) {
          return Corrupt(fmt::format("op {}: compression {} in a file compressed with {}", idx, comp, comp_name(f.compression)));
        }
        if (f.compression == Comp::None && dlen != h.block_size)
          return Corrupt(fmt::format("op {}: uncompressed {} of {} bytes (block size {})", idx, op_name(type), dlen, h.block_size));
      }
      UDM_TRY(check_data_op(op, h.block_size, size, idx));
      if (type == kReplace || type == kXor) f.data_end = std::max(f.data_end, op.data_offset + dlen);
      count(f, op);
      f.ops.push_back(op);
    }
    f.data_end = std::max(f.data_end, pos + kV2OpSize);
    if (next_pos <= pos) return Corrupt(fmt::format("op {}: the op walk does not advance", idx));
    pos = next_pos;
    data_pos = next_data;
  }
  if (label && !label_found) return Corrupt(fmt::format("label {} not found ({} ops read)", *label, records));
  if (label) f.read_label = label;
  return Status::Ok();
}

Status parse_v3(Reader& r, CowFile& f, std::optional<uint64_t> label) {
  const Header& h = f.h;
  const uint64_t size = r.size(), bs = h.block_size;
  if (h.compression_algorithm > static_cast<uint32_t>(Comp::Zstd))
    return Corrupt(fmt::format("unknown compression {}", h.compression_algorithm));
  f.compression = static_cast<Comp>(h.compression_algorithm);
  uint32_t max_unit = h.max_compression_size ? h.max_compression_size : h.block_size;
  if (!pow2(max_unit) || max_unit < bs || max_unit > (bs << kMaxUnitShift))
    return Corrupt(fmt::format("max_compression_size {} (want block_size << k, k = 0..6)", h.max_compression_size));
  f.max_unit = max_unit;
  const uint64_t S = uint64_t{h.header_size} + h.buffer_size;
  if (h.sequence_data_count > size / 4 || S + 4 * h.sequence_data_count > size)
    return Corrupt(fmt::format("truncated: sequence_data_count {} past the end of the file ({} bytes)", h.sequence_data_count, size));
  const uint64_t R = S + 4 * h.sequence_data_count;
  if (h.resume_point_max > size / 16 || R + 16 * uint64_t{h.resume_point_max} > size)
    return Corrupt(fmt::format("truncated: resume_point_max {} past the end of the file", h.resume_point_max));
  const uint64_t O = R + 16 * uint64_t{h.resume_point_max};
  if (h.op_count > h.op_count_max)
    return Corrupt(fmt::format("op_count {} is larger than op_count_max {}", h.op_count, h.op_count_max));
  if (h.op_count_max > size / 16 || O + 16 * h.op_count_max > size) {
    // The op array must exist up to op_count; its slots past it may be
    // missing only if the file ends there.
    if (h.op_count > size / 16 || O + 16 * h.op_count > size)
      return Corrupt(fmt::format("truncated: {} ops at {} past the end of the file ({} bytes)", h.op_count, O, size));
  }
  if (h.op_count_max > (uint64_t{1} << 40)) return Corrupt(fmt::format("op_count_max {} out of range", h.op_count_max));
  const uint64_t D = O + 16 * h.op_count_max;

  if (h.sequence_data_count) {
    std::vector<uint8_t> d(4 * h.sequence_data_count);
    UDM_TRY(r.read(S, d.data(), d.size()));
    f.sequence.resize(h.sequence_data_count);
    for (size_t i = 0; i < f.sequence.size(); i++) f.sequence[i] = le32(d.data() + 4 * i);
    f.has_sequence = true;
  }
  // Android reads resume_point_count entries even past the array (README
  // §5.4); the valid ones are the first min(count, max).
  const uint32_t nrp = std::min(h.resume_point_count, h.resume_point_max);
  for (uint32_t i = 0; i < nrp; i++) {
    uint8_t b[16];
    UDM_TRY(r.read(R + 16 * i, b, 16));
    ResumePoint rp{le64(b), le64(b + 8)};
    if (rp.op_index > h.op_count_max)
      return Corrupt(fmt::format("resume point {} (label {}): op_index {} past the op array ({} slots)", i, rp.label,
                                 rp.op_index, h.op_count_max));
    f.resume_points.push_back(rp);
    f.labels.push_back(rp.label);
  }
  uint64_t nops = h.op_count;
  if (label) {
    auto it = std::find_if(f.resume_points.begin(), f.resume_points.end(), [&](const ResumePoint& p) { return p.label == *label; });
    if (it == f.resume_points.end()) return Corrupt(fmt::format("label {} not found among the resume points", *label));
    nops = it->op_index;
    if (nops > h.op_count)
      return Corrupt(fmt::format("label {}: op_index {} past op_count {}", *label, nops, h.op_count));
    f.read_label = label;
  }
  if (nops > size / 16 || O + 16 * nops > size)
    return Corrupt(fmt::format("truncated: {} ops at {} past the end of the file ({} bytes)", nops, O, size));
  uint64_t data_pos = D;
  f.data_end = O + 16 * nops;
  f.ops.reserve(static_cast<size_t>(nops));
  for (uint64_t i = 0; i < nops; i++) {
    uint8_t b[16];
    UDM_TRY(r.read(O + 16 * i, b, 16));
    Op op;
    op.data_length = le32(b);
    op.new_block = le32(b + 4);
    const uint64_t si = le64(b + 8);
    op.type = static_cast<uint8_t>(si >> 60);
    const uint8_t k = static_cast<uint8_t>((si >> 57) & 7);
    const uint64_t src = si & ((uint64_t{1} << 48) - 1);
    if (op.type != kCopy && op.type != kReplace && op.type != kZero && op.type != kXor)
      return Corrupt(fmt::format("op {}: op type {} is not valid in v3", i, op.type));
    if (k > kMaxUnitShift) return Corrupt(fmt::format("op {}: compression unit exponent {} (max 6)", i, k));
    if (op.type == kReplace) {
      op.unit_shift = k;
      if ((bs << k) > max_unit)
        return Corrupt(fmt::format("op {}: compression unit {} larger than max_compression_size {}", i, bs << k, max_unit));
      if (src != data_pos)
        return Corrupt(fmt::format("op {}: REPLACE data at {}, but the data position is {}", i, src, data_pos));
      if (op.data_length > (bs << k)) {
        if (f.compression == Comp::None)
          return Corrupt(fmt::format("op {}: REPLACE data_length {} larger than its unit {}", i, op.data_length, bs << k));
      }
      op.data_offset = data_pos;
    } else if (k != 0) {
      return Corrupt(fmt::format("op {}: {} with compression unit exponent {}", i, op_name(op.type), k));
    }
    if (op.type == kXor) {
      op.source = src;
      op.data_offset = data_pos;
    }
    if (op.type == kCopy) op.source = src;
    if ((op.type == kReplace || op.type == kXor) && f.compression == Comp::None && op.data_length != (bs << op.unit_shift))
      return Corrupt(fmt::format("op {}: uncompressed {} of {} bytes (unit {})", i, op_name(op.type), op.data_length,
                                 bs << op.unit_shift));
    UDM_TRY(check_data_op(op, h.block_size, size, i));
    data_pos += op.data_length;
    if (data_pos > size && (op.type == kCopy || op.type == kZero))
      return Corrupt(fmt::format("op {}: data position {} past the end of the file", i, data_pos));
    f.data_end = std::max(f.data_end, data_pos);
    count(f, op);
    f.ops.push_back(op);
  }
  f.n_records = nops;
  return Status::Ok();
}

}  // namespace

Result<CowFile> parse_cow(BlockDevice& cow, std::optional<uint64_t> label) {
  Reader r(cow);
  CowFile f;
  f.file_size = r.size();
  UDM_TRY(parse_header(r, f.h));
  if (uint64_t{f.h.header_size} + f.h.buffer_size > f.file_size)
    return Corrupt(fmt::format("truncated: scratch area of {} bytes past the end of the file ({} bytes)", f.h.buffer_size,
                               f.file_size));
  if (f.h.major == 3)
    UDM_TRY(parse_v3(r, f, label));
  else
    UDM_TRY(parse_v2(r, f, label));
  return f;
}

void op_read_blocks(const Op& op, uint32_t bs, std::vector<uint64_t>& out) {
  if (op.type == kCopy) {
    out.push_back(op.source);
  } else if (op.type == kXor) {
    out.push_back(op.source / bs);
    if (op.source % bs) out.push_back(op.source / bs + 1);
  }
}

Status check_ops(const CowFile& f, uint64_t base_bytes, uint64_t view_bytes) {
  const uint64_t bs = f.block_size();
  const uint64_t view_blocks = view_bytes / bs, base_blocks = base_bytes / bs;
  std::vector<bool> seen(static_cast<size_t>(view_blocks));
  for (size_t i = 0; i < f.ops.size(); i++) {
    const Op& op = f.ops[i];
    if (op.new_block >= view_blocks || op.blocks() > view_blocks - op.new_block)
      return Invalid(fmt::format("op {} ({} block {}, {} blocks) writes past the end of the device ({} blocks)", i,
                                 op_name(op.type), op.new_block, op.blocks(), view_blocks));
    if (op.type == kCopy && op.source >= base_blocks)
      return Invalid(fmt::format("op {} (COPY to block {}) reads old block {}, past the base ({} blocks)", i, op.new_block,
                                 op.source, base_blocks));
    if (op.type == kXor && (op.source > base_bytes || base_bytes - op.source < bs))
      return Invalid(fmt::format("op {} (XOR to block {}) reads old bytes {}..{}, past the base ({} bytes)", i, op.new_block,
                                 op.source, op.source + bs, base_bytes));
    for (uint64_t b = op.new_block; b < op.new_block + op.blocks(); b++) {
      if (seen[b])
        return Invalid(fmt::format("two ops write block {} (the second is op {}, {}); Android's view and merge would "
                                   "disagree on it",
                                   b, i, op_name(op.type)));
      seen[b] = true;
    }
  }
  return Status::Ok();
}

Result<std::vector<uint32_t>> build_merge_order(const CowFile& f) {
  // First op per new_block.
  std::unordered_map<uint64_t, uint32_t> first;
  first.reserve(f.ops.size() * 2);
  for (uint32_t i = 0; i < f.ops.size(); i++) first.emplace(f.ops[i].new_block, i);
  std::vector<uint64_t> blocks;  // the merge order as new blocks
  std::vector<uint64_t> others;
  std::unordered_set<uint64_t> in_seq;
  if (f.version() == 3) {
    if (f.sequence.empty()) {
      for (const Op& op : f.ops) blocks.push_back(op.new_block);
    } else {
      for (uint32_t b : f.sequence) blocks.push_back(b), in_seq.insert(b);
      for (const Op& op : f.ops)
        if (!in_seq.count(op.new_block)) others.push_back(op.new_block);
    }
  } else {
    // v2: without a SEQUENCE op the COPY/XOR ops are merged in COW order.
    // (Every SEQUENCE op precedes the data ops in a file Android writes;
    // f.sequence holds them all.)
    for (uint32_t b : f.sequence) blocks.push_back(b), in_seq.insert(b);
    for (const Op& op : f.ops) {
      if (!f.has_sequence && (op.type == kCopy || op.type == kXor))
        blocks.push_back(op.new_block);
      else if (!in_seq.count(op.new_block))
        others.push_back(op.new_block);
    }
  }
  std::sort(others.begin(), others.end());
  blocks.insert(blocks.end(), others.begin(), others.end());
  std::vector<uint32_t> order;
  order.reserve(blocks.size());
  std::vector<bool> used(f.ops.size());
  for (uint64_t b : blocks) {
    auto it = first.find(b);
    if (it == first.end()) return Corrupt(fmt::format("sequence data names block {}, which no op writes", b));
    if (used[it->second]) return Corrupt(fmt::format("the merge order names block {} twice", b));
    used[it->second] = true;
    order.push_back(it->second);
  }
  if (order.size() != f.ops.size())
    return Corrupt(fmt::format("the merge order covers {} of {} ops (two ops for one block?)", order.size(), f.ops.size()));
  return order;
}

Status verify_merge_order(const CowFile& f, const std::vector<uint32_t>& order) {
  std::unordered_set<uint64_t> written;
  std::vector<uint64_t> reads;
  for (size_t i = 0; i < order.size(); i++) {
    const Op& op = f.ops[order[i]];
    reads.clear();
    op_read_blocks(op, f.block_size(), reads);
    for (uint64_t b : reads)
      if (written.count(b))
        return Corrupt(fmt::format("merge order position {}: {} to block {} reads block {}, which an earlier op of the "
                                   "merge overwrote; the COW cannot be merged in place",
                                   i, op_name(op.type), op.new_block, b));
    for (uint64_t b = op.new_block; b < op.new_block + op.blocks(); b++) written.insert(b);
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> read_payload(BlockDevice& cow, const CowFile& f, const Op& op) {
  const uint32_t bs = f.block_size();
  const uint64_t unit = uint64_t{bs} << op.unit_shift;
  if (op.data_offset > cow.size() || op.data_length > cow.size() - op.data_offset)
    return Corrupt(fmt::format("truncated: {} data at {} past the end of the COW", op_name(op.type), op.data_offset));
  std::vector<uint8_t> raw(op.data_length), out(static_cast<size_t>(unit));
  UDM_TRY(cow.read(op.data_offset, raw));
  bool is_raw;
  if (f.version() == 3)
    is_raw = op.data_length == unit;
  else
    is_raw = f.compression == Comp::None ||
             ((f.compression == Comp::Lz4 || f.compression == Comp::Zstd) && op.data_length == unit);
  Status s = decompress(is_raw ? Comp::None : f.compression, raw, out);
  if (!s.ok()) return s.context(fmt::format("{} to block {} (data at {})", op_name(op.type), op.new_block, op.data_offset));
  return out;
}

}  // namespace udm::acow
