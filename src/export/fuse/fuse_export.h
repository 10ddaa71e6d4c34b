// FUSE export: a directory with one regular file per udm device, so
// `losetup` + `mkfs` + `mount` work on a kernel without nbd or ublk.
// See docs/fuse.md for the page-cache and flush choices.
#pragma once

#include <atomic>
#include <map>
#include <set>
#include <mutex>
#include <string>
#include <thread>

#include "export/export_provider.h"

struct fuse_session;

namespace udm {

struct FuseExportOptions {
  unsigned threads = 0;     // FUSE worker threads; 0 = auto
  bool allow_other = true;  // root mounts it; loop/mount run as root anyway
};

class FuseExport {
 public:
  FuseExport(ExportProvider& provider, std::string mountpoint, FuseExportOptions opts = {});
  ~FuseExport();   // calls stop()
  Status start();  // mount and serve on own threads; returns once mounted
  void stop();     // unmount (lazily if busy), join threads; safe to call twice

  // Used by the FUSE callbacks (fuse_export.cpp).
  ExportProvider& provider() { return provider_; }
  uint64_t ino_for(const std::string& name);  // stable per name, >= 2
  bool name_for(uint64_t ino, std::string* name);
  time_t start_time() const { return start_time_; }
  void track(void* open_file, bool add);  // opens not yet released

 private:
  ExportProvider& provider_;
  std::string mountpoint_;
  FuseExportOptions opts_;
  fuse_session* se_ = nullptr;
  std::thread loop_;
  std::atomic<bool> loop_done_{false};
  bool mounted_ = false;
  dev_t conn_dev_ = 0;  // st_dev of the mount, names /sys/fs/fuse/connections/<minor>
  std::mutex mu_;
  std::map<std::string, uint64_t> ino_by_name_;
  std::map<uint64_t, std::string> name_by_ino_;
  uint64_t next_ino_ = 2;
  std::set<void*> open_files_;
  time_t start_time_ = 0;
};

}  // namespace udm
