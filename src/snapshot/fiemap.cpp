// udm fiemap FILE: the file's extents as a linear table, so a preallocated
// file can serve as a COW. Refuses holes and extents whose disk blocks do not
// hold the file's bytes (unwritten, delalloc, shared, encoded, inline...).
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <vector>

#include "cli/cli_common.h"
#include "util/status.h"

namespace udm {

namespace {

std::string bad_flag_reason(uint32_t f) {
  if (f & FIEMAP_EXTENT_UNWRITTEN)
    return "is unwritten (fallocate'd but never written: the disk blocks hold stale data, the file "
           "reads zeros); write the whole file first, e.g. dd if=/dev/zero conv=notrunc";
  if (f & FIEMAP_EXTENT_DELALLOC) return "is delayed-allocation (no disk blocks yet)";
  if (f & FIEMAP_EXTENT_UNKNOWN) return "has an unknown location";
  if (f & FIEMAP_EXTENT_SHARED) return "is shared with another file (reflink/snapshot)";
  if (f & (FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED))
    return "is encoded (compressed or encrypted)";
  if (f & (FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_NOT_ALIGNED))
    return "is inline/tail-packed/unaligned data";
  return "";
}

Result<std::string> device_of(dev_t d) {
  std::string sys = "/sys/dev/block/" + std::to_string(major(d)) + ":" + std::to_string(minor(d));
  std::ifstream f(sys + "/uevent");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("DEVNAME=", 0) == 0) return "/dev/" + line.substr(8);
  return Invalid("cannot find the block device " + std::to_string(major(d)) + ":" +
                 std::to_string(minor(d)) + " holding the file; pass --device");
}

void cmd_fiemap(const std::string& path, std::string device) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return cli::fail(ErrnoStatus("open " + path));
  struct stat st;
  fstat(fd, &st);
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return cli::fail(path + ": not a regular file");
  }
  uint64_t size = uint64_t(st.st_size) / 512 * 512;
  if (device.empty()) {
    auto d = device_of(st.st_dev);
    if (!d.ok()) {
      ::close(fd);
      return cli::fail(d.status());
    }
    device = *d;
  }
  constexpr uint32_t kN = 256;
  std::vector<uint8_t> mem(sizeof(fiemap) + kN * sizeof(fiemap_extent));
  auto* fm = reinterpret_cast<fiemap*>(mem.data());
  struct Seg { uint64_t log, phys, len; };
  std::vector<Seg> segs;
  uint64_t next = 0;
  bool last = false;
  while (!last && next < size) {
    memset(mem.data(), 0, mem.size());
    fm->fm_start = next;
    fm->fm_length = FIEMAP_MAX_OFFSET - next;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = kN;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0) {
      Status s = ErrnoStatus("FIEMAP on " + path);
      ::close(fd);
      return cli::fail(s);
    }
    if (fm->fm_mapped_extents == 0) break;
    for (uint32_t i = 0; i < fm->fm_mapped_extents; i++) {
      auto& e = fm->fm_extents[i];
      if (e.fe_flags & FIEMAP_EXTENT_LAST) last = true;
      if (e.fe_logical >= size) continue;
      std::string why = bad_flag_reason(e.fe_flags);
      if (!why.empty()) {
        ::close(fd);
        return cli::fail(path + ": extent at file offset " + std::to_string(e.fe_logical) + " " + why);
      }
      if (e.fe_logical > next) {
        ::close(fd);
        return cli::fail(path + ": hole at file offset " + std::to_string(next) +
                         " (preallocate the whole file and write it)");
      }
      uint64_t skip = next - e.fe_logical;
      if (skip >= e.fe_length) continue;
      uint64_t len = std::min<uint64_t>(e.fe_length - skip, size - next);
      Seg s{next, e.fe_physical + skip, len};
      if (!segs.empty() && segs.back().log + segs.back().len == s.log &&
          segs.back().phys + segs.back().len == s.phys)
        segs.back().len += len;
      else
        segs.push_back(s);
      next += len;
    }
  }
  ::close(fd);
  if (next < size)
    return cli::fail(path + ": hole at file offset " + std::to_string(next) +
                     " (preallocate the whole file and write it)");
  for (auto& s : segs)
    std::cout << s.log / 512 << " " << s.len / 512 << " linear " << device << " " << s.phys / 512
              << "\n";
}

}  // namespace

void register_fiemap_cli(CLI::App& app) {
  auto* sub = app.add_subcommand("fiemap", "print a preallocated file's extents as a linear table");
  auto p = std::make_shared<std::string>(), d = std::make_shared<std::string>();
  sub->add_option("file", *p, "file on a mounted filesystem")->required();
  sub->add_option("--device", *d, "block device to name in the table (default: the file's)");
  sub->callback([p, d] { cmd_fiemap(*p, *d); });
}

}  // namespace udm
