#include "io/region_overlay.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

#include "util/crc.h"
#include "util/endian.h"
#include "util/fd_io.h"
#include "util/log.h"

namespace udm {
namespace {

constexpr char kMagic[8] = {'U', 'D', 'M', 'O', 'V', 'L', '0', '1'};
constexpr uint64_t kAlign = 4096;

uint64_t align_up(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

Status sync_parent(const std::string& path) {
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return ErrnoStatus("open directory " + dir);
  int r = ::fsync(dfd);
  int e = errno;
  ::close(dfd);
  if (r != 0) return ErrnoStatus("fsync directory " + dir, e);
  return Status::Ok();
}

std::string describe(const std::vector<ByteRange>& rs) {
  std::string s;
  for (auto& r : rs) s += fmt::format("{}[{}, {})", s.empty() ? "" : " ", r.offset, r.offset + r.length);
  return s;
}

Status check_regions(const std::vector<ByteRange>& rs, uint64_t base_size) {
  if (rs.empty() || rs.size() > RegionOverlayDevice::kMaxRegions)
    return Invalid(fmt::format("region overlay: {} regions (1..{})", rs.size(), RegionOverlayDevice::kMaxRegions));
  uint64_t total = 0, prev_end = 0;
  for (size_t i = 0; i < rs.size(); i++) {
    const ByteRange& r = rs[i];
    if (r.length == 0 || r.offset > base_size || r.length > base_size - r.offset)
      return Invalid(fmt::format("region overlay: region [{}, +{}) is empty or outside the {}-byte device", r.offset,
                                 r.length, base_size));
    if (i > 0 && r.offset < prev_end)
      return Invalid(fmt::format("region overlay: regions not sorted and disjoint ({})", describe(rs)));
    prev_end = r.offset + r.length;
    total += r.length;
  }
  if (total > RegionOverlayDevice::kMaxRegionBytes)
    return Invalid(fmt::format("region overlay: {} bytes of regions (at most {})", total,
                               RegionOverlayDevice::kMaxRegionBytes));
  return Status::Ok();
}

// File offset of each region's bytes.
std::vector<uint64_t> layout(const std::vector<ByteRange>& rs) {
  std::vector<uint64_t> at;
  uint64_t pos = RegionOverlayDevice::kHeaderSize;
  for (auto& r : rs) {
    at.push_back(pos);
    pos += align_up(r.length);
  }
  at.push_back(pos);  // the file's size
  return at;
}

}  // namespace

std::vector<uint8_t> encode_region_overlay_header(const std::string& key, uint64_t base_size,
                                                  const std::vector<ByteRange>& rs) {
  std::vector<uint8_t> h(RegionOverlayDevice::kHeaderSize, 0);
  std::memcpy(h.data(), kMagic, 8);
  store_le<uint64_t>(&h[8], base_size);
  store_le<uint32_t>(&h[16], uint32_t(rs.size()));
  store_le<uint32_t>(&h[20], uint32_t(key.size()));
  for (size_t i = 0; i < rs.size(); i++) {
    store_le<uint64_t>(&h[32 + 16 * i], rs[i].offset);
    store_le<uint64_t>(&h[40 + 16 * i], rs[i].length);
  }
  std::memcpy(&h[32 + 16 * rs.size()], key.data(), key.size());
  store_le<uint32_t>(&h[24], crc32_ieee(0, h.data(), h.size()));
  return h;
}

Result<RegionOverlayInfo> decode_region_overlay_header(std::span<const uint8_t> b) {
  if (b.size() < RegionOverlayDevice::kHeaderSize || std::memcmp(b.data(), kMagic, 8) != 0)
    return Corrupt("not a region overlay state file (bad magic)");
  std::vector<uint8_t> h(b.begin(), b.begin() + RegionOverlayDevice::kHeaderSize);
  uint32_t crc = load_le<uint32_t>(&h[24]);
  store_le<uint32_t>(&h[24], 0);
  if (crc32_ieee(0, h.data(), h.size()) != crc) return Corrupt("header checksum mismatch");
  if (load_le<uint32_t>(&h[28]) != 0) return Corrupt("header: reserved bytes 28..31 are not zero");
  RegionOverlayInfo i;
  i.base_size = load_le<uint64_t>(&h[8]);
  uint32_t n = load_le<uint32_t>(&h[16]), klen = load_le<uint32_t>(&h[20]);
  if (n == 0 || n > RegionOverlayDevice::kMaxRegions || klen > RegionOverlayDevice::kMaxKey)
    return Corrupt(fmt::format("header: {} regions, key of {} bytes", n, klen));
  for (uint32_t k = 0; k < n; k++)
    i.regions.push_back({load_le<uint64_t>(&h[32 + 16 * k]), load_le<uint64_t>(&h[40 + 16 * k])});
  if (Status st = check_regions(i.regions, i.base_size); !st.ok()) return Corrupt("header: " + st.message());
  const size_t key_at = 32 + 16 * size_t{n};
  i.key.assign(reinterpret_cast<const char*>(&h[key_at]), klen);
  for (size_t k = key_at + klen; k < h.size(); k++)
    if (h[k]) return Corrupt(fmt::format("header: byte {} after the key is not zero", k));
  for (auto& r : i.regions) i.region_bytes += r.length;
  return i;
}


// The open state file of one path, shared by every overlay of it in the process.
struct RegionOverlayDevice::File {
  std::string path, key;
  uint64_t base_size = 0;
  std::vector<ByteRange> regions;
  std::vector<uint64_t> at;  // file offset of each region's bytes
  int fd = -1;
  ~File() {
    if (fd >= 0) ::close(fd);  // also drops the flock
  }
  // The region holding `off`, or the index of the first region after it (== size() if none).
  size_t find(uint64_t off, bool* inside) const {
    auto it = std::upper_bound(regions.begin(), regions.end(), off,
                               [](uint64_t o, const ByteRange& r) { return o < r.offset; });
    if (it != regions.begin()) {
      auto p = std::prev(it);
      if (off < p->offset + p->length) {
        *inside = true;
        return size_t(p - regions.begin());
      }
    }
    *inside = false;
    return size_t(it - regions.begin());
  }
};

namespace {
std::mutex g_files_mu;
std::map<std::string, std::weak_ptr<RegionOverlayDevice::File>>& g_files() {
  static std::map<std::string, std::weak_ptr<RegionOverlayDevice::File>> m;
  return m;
}
}  // namespace

Result<RegionOverlayInfo> read_region_overlay(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(path);
  std::vector<uint8_t> h(RegionOverlayDevice::kHeaderSize);
  Status st = pread_all(fd, h.data(), h.size(), 0, path);
  struct stat ss {};
  ::fstat(fd, &ss);
  ::close(fd);
  if (!st.ok()) return Corrupt(path + ": short header");
  auto i = decode_region_overlay_header(h);
  if (!i.ok()) return Corrupt(path + ": " + i.status().message());
  if (uint64_t(ss.st_size) < layout(i->regions).back())
    return Corrupt(fmt::format("{}: {} bytes, shorter than its regions need", path, ss.st_size));
  return i;
}

Result<std::shared_ptr<RegionOverlayDevice>> RegionOverlayDevice::open(DevicePtr base, const LocalStateHome& home,
                                                                       std::vector<ByteRange> regions) {
  const uint64_t base_size = base->size();
  UDM_TRY(check_regions(regions, base_size));
  if (home.key.size() > kMaxKey) return Invalid(fmt::format("region overlay: key of {} bytes", home.key.size()));
  const std::string& path = home.path;
  std::shared_ptr<RegionOverlayDevice> d(new RegionOverlayDevice());
  d->base_ = std::move(base);
  std::lock_guard g(g_files_mu);
  auto& files = g_files();
  if (auto it = files.find(path); it != files.end()) {
    if (auto f = it->second.lock()) {
      if (f->key != home.key || f->base_size != base_size || f->regions != regions)
        return Status::Error(EBUSY, fmt::format("{}: in use for another object or other regions in this process", path));
      d->file_ = f;
      return d;
    }
  }
  auto f = std::make_shared<File>();
  f->path = path;
  f->key = home.key;
  f->base_size = base_size;
  f->regions = regions;
  f->at = layout(regions);
  const std::string keep_it =
      "; it holds the progress written over this object: remove it (`udm cache evict --state`) only to start over";
  f->fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (f->fd < 0 && errno != ENOENT) return ErrnoStatus("open " + path);
  if (f->fd >= 0) {
    if (::flock(f->fd, LOCK_EX | LOCK_NB) != 0)
      return Status::Error(EBUSY, path + ": in use by another process");
    auto info = read_region_overlay(path);
    if (!info.ok()) return Corrupt(info.status().message() + keep_it);
    if (info->key != home.key) {
      d->replaced_ = "it was made for another object (" + info->key + ")";
      log::warn("{}: not used: {}; making a new one", path, d->replaced_);
      ::close(f->fd);
      f->fd = -1;
    } else if (info->base_size != base_size || info->regions != regions) {
      return Status::Error(EBUSY, fmt::format("{}: made for regions {} of a {}-byte object, not {} of {} bytes{}", path,
                                              describe(info->regions), info->base_size, describe(regions), base_size,
                                              keep_it));
    }
  }
  if (f->fd < 0) {
    // Made once, crash-safely: PATH.tmp written whole and synced, renamed, the directory synced.
    const uint64_t file_size = f->at.back();
    std::vector<uint8_t> content(file_size, 0);
    auto h = encode_region_overlay_header(home.key, base_size, regions);
    std::copy(h.begin(), h.end(), content.begin());
    for (size_t i = 0; i < regions.size(); i++) {
      Status st = d->base_->read(regions[i].offset, std::span<uint8_t>(content.data() + f->at[i], regions[i].length));
      if (!st.ok()) return st.context(fmt::format("region overlay {}: reading region [{}, +{})", path, regions[i].offset,
                                                  regions[i].length));
    }
    const std::string tmp = path + ".tmp";
    int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return ErrnoStatus("create " + tmp);
    Status st = pwrite_all(fd, content.data(), content.size(), 0, tmp);
    if (st.ok() && ::fsync(fd) != 0) st = ErrnoStatus("fsync " + tmp);
    if (st.ok() && ::flock(fd, LOCK_EX | LOCK_NB) != 0) st = Status::Error(EBUSY, tmp + ": in use by another process");
    if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = ErrnoStatus("rename " + tmp + " to " + path);
    if (st.ok()) st = sync_parent(path);
    if (!st.ok()) {
      ::close(fd);
      ::unlink(tmp.c_str());
      return st;
    }
    f->fd = fd;
    d->created_ = true;
  }
  files[path] = f;
  d->file_ = std::move(f);
  return d;
}

RegionOverlayDevice::~RegionOverlayDevice() = default;

const std::string& RegionOverlayDevice::path() const { return file_->path; }

DeviceCaps RegionOverlayDevice::caps() const {
  DeviceCaps c = base_->caps();
  c.read_only = false;  // inside the regions
  c.can_trim = false;
  c.trim_zeroes = false;
  c.fast_zero = false;
  c.can_flush = true;
  return c;
}

Status RegionOverlayDevice::do_read(uint64_t offset, std::span<uint8_t> buf) {
  const File& f = *file_;
  uint64_t pos = offset;
  const uint64_t end = offset + buf.size();
  while (pos < end) {
    bool inside = false;
    size_t i = f.find(pos, &inside);
    if (inside) {
      const ByteRange& r = f.regions[i];
      uint64_t n = std::min(end, r.offset + r.length) - pos;
      UDM_TRY(pread_all(f.fd, buf.data() + (pos - offset), n, f.at[i] + (pos - r.offset), f.path));
      pos += n;
    } else {
      uint64_t next = i < f.regions.size() ? std::min(end, f.regions[i].offset) : end;
      UDM_TRY(base_->read(pos, buf.subspan(pos - offset, next - pos)));
      pos = next;
    }
  }
  return Status::Ok();
}

Status RegionOverlayDevice::do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) {
  const File& f = *file_;
  const uint64_t end = offset + buf.size();
  // Every byte inside a region, or nothing is written.
  for (uint64_t pos = offset; pos < end;) {
    bool inside = false;
    size_t i = f.find(pos, &inside);
    if (!inside)
      return ReadOnly(fmt::format("write of {} bytes at {}: byte {} is outside the writable regions ({}) kept in {}",
                                  buf.size(), offset, pos, describe(f.regions), f.path));
    pos = f.regions[i].offset + f.regions[i].length;
  }
  for (uint64_t pos = offset; pos < end;) {
    bool inside = false;
    size_t i = f.find(pos, &inside);
    const ByteRange& r = f.regions[i];
    uint64_t n = std::min(end, r.offset + r.length) - pos;
    UDM_TRY(pwrite_all(f.fd, buf.data() + (pos - offset), n, f.at[i] + (pos - r.offset), f.path));
    pos += n;
  }
  return fua ? do_flush() : Status::Ok();
}

Status RegionOverlayDevice::do_flush() {
  if (::fdatasync(file_->fd) != 0) return ErrnoStatus("fdatasync " + file_->path);
  return Status::Ok();
}

}  // namespace udm
