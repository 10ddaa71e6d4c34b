#include "export/nbd/nbd_proto.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

namespace udm::nbd {

uint16_t get_be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t get_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint64_t get_be64(const uint8_t* p) { return (uint64_t{get_be32(p)} << 32) | get_be32(p + 4); }
void put_be16(std::vector<uint8_t>& v, uint16_t x) {
  v.push_back(static_cast<uint8_t>(x >> 8));
  v.push_back(static_cast<uint8_t>(x));
}
void put_be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<uint8_t>(x >> s));
}
void put_be64(std::vector<uint8_t>& v, uint64_t x) {
  for (int s = 56; s >= 0; s -= 8) v.push_back(static_cast<uint8_t>(x >> s));
}
namespace {
void store_be16(uint8_t* p, uint16_t x) {
  p[0] = static_cast<uint8_t>(x >> 8);
  p[1] = static_cast<uint8_t>(x);
}
void store_be32(uint8_t* p, uint32_t x) {
  for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(x >> (24 - 8 * i));
}
void store_be64(uint8_t* p, uint64_t x) {
  store_be32(p, static_cast<uint32_t>(x >> 32));
  store_be32(p + 4, static_cast<uint32_t>(x));
}
}  // namespace

Result<Request> decode_request(std::span<const uint8_t> h) {
  if (h.size() < kRequestSize) return Invalid("short request header");
  uint32_t magic = get_be32(h.data());
  if (magic != kRequestMagic) return Invalid(fmt::format("bad request magic {:#010x}", magic));
  Request r;
  r.flags = get_be16(h.data() + 4);
  r.type = get_be16(h.data() + 6);
  r.cookie = get_be64(h.data() + 8);
  r.offset = get_be64(h.data() + 16);
  r.length = get_be32(h.data() + 24);
  return r;
}

Check check_request(const Request& r, const ExportLimits& lim) {
  auto in_range = [&] { return r.offset <= lim.size && r.length <= lim.size - r.offset; };
  const uint16_t known_flags = kCmdFlagFua | kCmdFlagNoHole | kCmdFlagDf | kCmdFlagReqOne | kCmdFlagFastZero;
  if (r.flags & ~known_flags) return {kEinval, false, "unknown command flags"};
  switch (r.type) {
    case kCmdRead:
      if (r.length > kMaxRequest) return {kEinval, false, "read longer than 64 MiB"};
      if (!in_range()) return {kEinval, false, "read beyond the end of the export"};
      if ((r.flags & kCmdFlagDf) && !lim.structured)
        return {kEinval, false, "DF flag without structured replies"};
      if (r.flags & (kCmdFlagNoHole | kCmdFlagReqOne | kCmdFlagFastZero))
        return {kEinval, false, "bad flag for read"};
      return {};
    case kCmdWrite:
      // The payload follows the header: one we will not buffer ends the connection.
      if (r.length > kMaxRequest) return {kEinval, true, "write longer than 64 MiB"};
      if (lim.read_only) return {kEperm, false, "export is read-only"};
      if (!in_range()) return {kEnospc, false, "write beyond the end of the export"};
      if (r.flags & ~kCmdFlagFua) return {kEinval, false, "bad flag for write"};
      return {};
    case kCmdFlush:
      if (r.offset != 0 || r.length != 0) return {kEinval, false, "flush with offset or length"};
      return {};
    case kCmdTrim:
      if (lim.read_only) return {kEperm, false, "export is read-only"};
      if (!in_range()) return {kEinval, false, "trim beyond the end of the export"};
      if (r.flags & ~kCmdFlagFua) return {kEinval, false, "bad flag for trim"};
      return {};
    case kCmdWriteZeroes:
      if (lim.read_only) return {kEperm, false, "export is read-only"};
      if (!in_range()) return {kEnospc, false, "write zeroes beyond the end of the export"};
      if (r.flags & ~(kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero))
        return {kEinval, false, "bad flag for write zeroes"};
      return {};
    case kCmdCache:
      if (!in_range()) return {kEinval, false, "cache beyond the end of the export"};
      return {};
    case kCmdBlockStatus:
      if (!lim.meta || !lim.structured)
        return {kEinval, false, "block status without a negotiated meta context"};
      if (r.length == 0) return {kEinval, false, "block status of 0 bytes"};
      if (!in_range()) return {kEinval, false, "block status beyond the end of the export"};
      if (r.flags & ~kCmdFlagReqOne) return {kEinval, false, "bad flag for block status"};
      return {};
    case kCmdDisc:
      return {};
    default:
      return {kEinval, false, fmt::format("unsupported command {}", r.type)};
  }
}

uint32_t errno_to_nbd(int err) {
  switch (err) {
    case 0: return 0;
    case EPERM: case EROFS: case EACCES: return kEperm;
    case ENOMEM: return kEnomem;
    case EINVAL: case ERANGE: return kEinval;
    case ENOSPC: case EFBIG: case EDQUOT: return kEnospc;
    case EOVERFLOW: return kEoverflow;
    case EOPNOTSUPP: return kEnotsup;
    case ESHUTDOWN: return kEshutdown;
    default: return kEio;
  }
}

Result<InfoRequest> parse_info_request(std::span<const uint8_t> d) {
  if (d.size() < 6) return Invalid("info request shorter than 6 bytes");
  uint32_t name_len = get_be32(d.data());
  if (name_len > d.size() - 6) return Invalid("export name length exceeds the option");
  InfoRequest r;
  r.name.assign(reinterpret_cast<const char*>(d.data() + 4), name_len);
  size_t pos = 4 + name_len;
  uint16_t n = get_be16(d.data() + pos);
  pos += 2;
  if (size_t{n} * 2 != d.size() - pos) return Invalid("info request count does not match its length");
  for (uint16_t i = 0; i < n; i++) r.infos.push_back(get_be16(d.data() + pos + 2 * i));
  return r;
}

Result<MetaContextRequest> parse_meta_context_request(std::span<const uint8_t> d) {
  auto too_big = [](std::string m) { return Status::Error(E2BIG, std::move(m)); };
  if (d.size() < 8) return Invalid("meta context request shorter than 8 bytes");
  uint32_t name_len = get_be32(d.data());
  if (name_len > d.size() - 8) return Invalid("export name length exceeds the option");
  if (name_len > kMaxMetaQuery) return too_big("export name longer than 4096 bytes");
  MetaContextRequest r;
  r.name.assign(reinterpret_cast<const char*>(d.data() + 4), name_len);
  size_t pos = 4 + size_t{name_len};
  uint32_t n = get_be32(d.data() + pos);
  pos += 4;
  if (n > kMaxMetaQueries) return too_big(fmt::format("{} meta context queries (at most {})", n, kMaxMetaQueries));
  for (uint32_t i = 0; i < n; i++) {
    if (d.size() - pos < 4) return Invalid(fmt::format("meta context query {} is cut short", i));
    uint32_t len = get_be32(d.data() + pos);
    pos += 4;
    if (len > d.size() - pos) return Invalid(fmt::format("meta context query {} exceeds the option", i));
    if (len > kMaxMetaQuery) return too_big(fmt::format("meta context query {} longer than 4096 bytes", i));
    r.queries.emplace_back(reinterpret_cast<const char*>(d.data() + pos), len);
    pos += len;
  }
  if (pos != d.size()) return Invalid("meta context request has trailing bytes");
  return r;
}

const char* meta_context_name(uint32_t id) {
  switch (id) {
    case kMetaBaseAllocation: return "base:allocation";
    case kMetaQemuAllocationDepth: return "qemu:allocation-depth";
    default: return "";
  }
}

std::vector<uint32_t> select_meta_contexts(const std::vector<std::string>& queries, bool list) {
  const uint32_t all[] = {kMetaBaseAllocation, kMetaQemuAllocationDepth};
  bool want[3] = {false, false, false};
  if (list && queries.empty()) want[1] = want[2] = true;
  for (const auto& q : queries) {
    for (uint32_t id : all) {
      std::string name = meta_context_name(id);
      std::string ns = name.substr(0, name.find(':') + 1);
      if (q == name || (list && q == ns)) want[id] = true;
    }
  }
  std::vector<uint32_t> out;
  for (uint32_t id : all)
    if (want[id]) out.push_back(id);
  return out;
}

std::vector<uint8_t> meta_context_reply(uint32_t id) {
  std::string name = meta_context_name(id);
  std::vector<uint8_t> v;
  put_be32(v, id);
  v.insert(v.end(), name.begin(), name.end());
  return v;
}

std::vector<uint8_t> block_status_chunk(uint64_t cookie, bool done, uint32_t id, const AllocMap& map,
                                        bool req_one) {
  std::vector<std::pair<uint32_t, uint32_t>> desc;
  for (const AllocRun& r : map) {
    uint32_t st;
    if (id == kMetaQemuAllocationDepth) {
      st = r.kind == AllocKind::kHole ? 0 : (r.depth ? r.depth : 1);
    } else {
      st = r.kind == AllocKind::kHole ? (kStateHole | kStateZero) : r.kind == AllocKind::kZero ? kStateZero : 0;
    }
    // Requests are at most 4 GiB - 1, and so is every run of a map of one.
    uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(r.length, UINT32_MAX));
    if (len == 0) continue;
    if (!desc.empty() && desc.back().second == st && uint64_t{desc.back().first} + len <= UINT32_MAX)
      desc.back().first += len;
    else
      desc.emplace_back(len, st);
  }
  if (req_one && desc.size() > 1) desc.resize(1);
  if (desc.size() > kMaxAllocRuns) desc.resize(kMaxAllocRuns);  // a prefix is a valid answer
  std::vector<uint8_t> v(20);
  structured_header(v.data(), cookie, done ? kReplyFlagDone : 0, kReplyTypeBlockStatus,
                    static_cast<uint32_t>(4 + 8 * desc.size()));
  v.reserve(24 + 8 * desc.size());
  put_be32(v, id);
  for (auto [len, st] : desc) {
    put_be32(v, len);
    put_be32(v, st);
  }
  return v;
}

std::vector<uint8_t> option_reply(uint32_t option, uint32_t type, std::span<const uint8_t> data) {
  std::vector<uint8_t> v;
  v.reserve(20 + data.size());
  put_be64(v, kOptReplyMagic);
  put_be32(v, option);
  put_be32(v, type);
  put_be32(v, static_cast<uint32_t>(data.size()));
  v.insert(v.end(), data.begin(), data.end());
  return v;
}

std::vector<uint8_t> info_export(uint64_t size, uint16_t tx_flags) {
  std::vector<uint8_t> v;
  put_be16(v, kInfoExport);
  put_be64(v, size);
  put_be16(v, tx_flags);
  return v;
}

std::vector<uint8_t> info_block_size(uint32_t min, uint32_t preferred, uint32_t max) {
  std::vector<uint8_t> v;
  put_be16(v, kInfoBlockSize);
  put_be32(v, min);
  put_be32(v, preferred);
  put_be32(v, max);
  return v;
}

std::vector<uint8_t> info_name(const std::string& name) {
  // Sized up front (also keeps g++ 12's -Warray-bounds false positive quiet).
  std::vector<uint8_t> v(2 + name.size());
  store_be16(v.data(), kInfoName);
  std::copy(name.begin(), name.end(), v.begin() + 2);
  return v;
}

void simple_reply(uint8_t out[16], uint64_t cookie, uint32_t error) {
  store_be32(out, kSimpleReplyMagic);
  store_be32(out + 4, error);
  store_be64(out + 8, cookie);
}

void structured_header(uint8_t out[20], uint64_t cookie, uint16_t flags, uint16_t type,
                       uint32_t length) {
  store_be32(out, kStructuredReplyMagic);
  store_be16(out + 4, flags);
  store_be16(out + 6, type);
  store_be64(out + 8, cookie);
  store_be32(out + 16, length);
}

std::vector<uint8_t> structured_error(uint64_t cookie, uint32_t error, const std::string& msg) {
  std::string m = msg.substr(0, 4096);
  std::vector<uint8_t> v(20);
  structured_header(v.data(), cookie, kReplyFlagDone, kReplyTypeError,
                    static_cast<uint32_t>(6 + m.size()));
  put_be32(v, error);
  put_be16(v, static_cast<uint16_t>(m.size()));
  v.insert(v.end(), m.begin(), m.end());
  return v;
}

}  // namespace udm::nbd
