#define FUSE_USE_VERSION 314
#include "export/fuse/fuse_export.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <climits>
#include <cstdio>
#include <sys/mount.h>
#include <vector>

#include "util/log.h"

namespace udm {
namespace {

constexpr uint32_t kMaxIo = 1u << 20;  // max_write: 1 MiB per request
// max_read: half of it, so that a spliced reply (data + header + libfuse's
// three pages of slack) fits a pipe of the default pipe-max-size (1 MiB):
// without CAP_SYS_RESOURCE libfuse cannot grow its pipe past that, and a
// 1 MiB reply then falls back to a fresh 1 MiB buffer per request.
constexpr uint32_t kMaxRead = kMaxIo / 2;
constexpr size_t kMinSplice = 2 * 4096;  // libfuse splices replies of two pages and more

FuseExport* self(fuse_req_t req) { return static_cast<FuseExport*>(fuse_req_userdata(req)); }

// What a FUSE open holds: the counted open of the device.
struct OpenFile {
  DevicePtr dev;
  bool writable;
};

OpenFile* of(fuse_file_info* fi) { return reinterpret_cast<OpenFile*>(fi->fh); }

int err_of(const Status& s) { return s.code() ? s.code() : EIO; }

void fill_attr(FuseExport* fx, uint64_t ino, const ExportInfo* info, struct stat* st) {
  std::memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_uid = 0;
  st->st_gid = 0;
  st->st_atime = st->st_mtime = st->st_ctime = fx->start_time();
  st->st_blksize = 4096;
  if (!info) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return;
  }
  st->st_mode = S_IFREG | (info->read_only ? 0400 : 0600);
  st->st_nlink = 1;
  st->st_size = static_cast<off_t>(info->size);
  st->st_blocks = static_cast<blkcnt_t>((info->size + 511) / 512);
}

void op_init(void* userdata, fuse_conn_info* conn) {
  conn->max_write = kMaxIo;
  conn->max_read = kMaxRead;
  conn->max_readahead = kMaxIo;
  // Parallel direct writes matter for loop's queue depth.
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  // Reads a device serves straight from a file (BlockDevice::direct_extent)
  // are spliced from that file into /dev/fuse (op_read): one copy instead of
  // pread's plus the write's. Without the capability libfuse preads instead.
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  conn->want &= ~static_cast<unsigned>(FUSE_CAP_WRITEBACK_CACHE);
  conn->max_background = 64;
  conn->congestion_threshold = 48;
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  FuseExport* fx = self(req);
  if (parent != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOENT);
  auto info = fx->provider().stat_export(name);
  if (!info.ok()) return (void)fuse_reply_err(req, ENOENT);
  fuse_entry_param e{};
  e.ino = fx->ino_for(name);
  e.generation = 1;
  // Sizes change on reload: no attribute/entry caching in the kernel.
  e.attr_timeout = 0;
  e.entry_timeout = 0;
  fill_attr(fx, e.ino, &*info, &e.attr);
  fuse_reply_entry(req, &e);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  FuseExport* fx = self(req);
  struct stat st;
  if (ino == FUSE_ROOT_ID) {
    fill_attr(fx, ino, nullptr, &st);
    return (void)fuse_reply_attr(req, &st, 0);
  }
  std::string name;
  if (!fx->name_for(ino, &name)) return (void)fuse_reply_err(req, ENOENT);
  auto info = fx->provider().stat_export(name);
  if (!info.ok()) return (void)fuse_reply_err(req, ENOENT);
  fill_attr(fx, ino, &*info, &st);
  fuse_reply_attr(req, &st, 0);
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                fuse_file_info* fi) {
  // A device's size is its table's: refuse truncation to another size.
  if (to_set & FUSE_SET_ATTR_SIZE) {
    FuseExport* fx = self(req);
    std::string name;
    if (!fx->name_for(ino, &name)) return (void)fuse_reply_err(req, ENOENT);
    auto info = fx->provider().stat_export(name);
    if (!info.ok()) return (void)fuse_reply_err(req, ENOENT);
    if (static_cast<uint64_t>(attr->st_size) != info->size) return (void)fuse_reply_err(req, EPERM);
  }
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))
    return (void)fuse_reply_err(req, EPERM);
  op_getattr(req, ino, fi);  // times: accepted and ignored
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  FuseExport* fx = self(req);
  if (ino != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOTDIR);
  std::vector<std::pair<std::string, uint64_t>> entries = {{".", FUSE_ROOT_ID}, {"..", FUSE_ROOT_ID}};
  for (const auto& e : fx->provider().list_exports()) entries.emplace_back(e.name, fx->ino_for(e.name));
  std::vector<char> buf(size);
  size_t used = 0;
  for (size_t i = static_cast<size_t>(off); i < entries.size(); i++) {
    struct stat st{};
    st.st_ino = entries[i].second;
    st.st_mode = i < 2 ? S_IFDIR : S_IFREG;
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, entries[i].first.c_str(),
                                    &st, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  FuseExport* fx = self(req);
  if (ino == FUSE_ROOT_ID) return (void)fuse_reply_err(req, EISDIR);
  std::string name;
  if (!fx->name_for(ino, &name)) return (void)fuse_reply_err(req, ENOENT);
  bool want_write = (fi->flags & O_ACCMODE) != O_RDONLY;
  auto dev = fx->provider().open_export(name);
  if (!dev.ok()) return (void)fuse_reply_err(req, ENOENT);
  if (want_write && (*dev)->caps().read_only) return (void)fuse_reply_err(req, EROFS);
  auto* f = new OpenFile{std::move(dev).value(), want_write};
  fx->track(f, true);
  fi->fh = reinterpret_cast<uint64_t>(f);
  // direct_io: every read and write reaches the device. The FUSE file keeps
  // no page cache of its own, so the device may also be written over NBD or
  // change on reload without stale pages, and a loop device on top (which
  // has its own cache) never reads through two caches.
  fi->direct_io = 1;
  fi->keep_cache = 0;
  if (fuse_reply_open(req, fi) != 0) {  // open interrupted: no release follows
    fx->track(f, false);
    delete f;
  }
}

void op_release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  self(req)->track(of(fi), false);
  delete of(fi);
  fuse_reply_err(req, 0);
}

void op_read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  OpenFile* f = of(fi);
  uint64_t dsize = f->dev->size();
  if (off < 0) return (void)fuse_reply_err(req, EINVAL);
  if (static_cast<uint64_t>(off) >= dsize) return (void)fuse_reply_buf(req, nullptr, 0);
  size_t n = static_cast<size_t>(std::min<uint64_t>(size, dsize - static_cast<uint64_t>(off)));
  // The direct path: the whole range is bytes of a file, so libfuse splices
  // them from it into /dev/fuse. The reply is sent inside direct_extent,
  // which holds the device's I/O gate meanwhile, so suspend and reload wait
  // for it as for a read(). A range only partly covered takes the normal
  // path, and so do reads under two pages (libfuse would not splice them but
  // pread into a fresh buffer: the buffered path below is as cheap).
  bool replied = false;
  auto splice_reply = [&](const DirectExtent& e) {
    if (e.length < n) return Status::Ok();
    fuse_bufvec bv = FUSE_BUFVEC_INIT(n);
    bv.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
    bv.buf[0].fd = e.fd;
    bv.buf[0].pos = static_cast<off_t>(e.file_offset);
    // libfuse answers a failed read of the file with an error reply itself;
    // a failure to send means the request is gone (interrupted, unmounted).
    int rc = fuse_reply_data(req, &bv, static_cast<fuse_buf_copy_flags>(0));
    if (rc != 0) log::debug("fuse: spliced read of {} bytes at {}: {}", n, off, std::strerror(-rc));
    replied = true;
    return Status::Ok();
  };
  Result<bool> direct = false;
  if (n >= kMinSplice) direct = f->dev->direct_extent(static_cast<uint64_t>(off), n, splice_reply);
  if (replied) return;
  if (!direct.ok()) {
    log::warn("fuse: read {} bytes at {}: {}", n, off, direct.status().to_string());
    return (void)fuse_reply_err(req, err_of(direct.status()));
  }
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < n) buf.resize(std::max<size_t>(n, kMaxIo));
  Status s = f->dev->read(static_cast<uint64_t>(off), std::span<uint8_t>(buf.data(), n));
  if (!s.ok()) {
    log::warn("fuse: read {} bytes at {}: {}", n, off, s.to_string());
    return (void)fuse_reply_err(req, err_of(s));
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(buf.data()), n);
}

void op_write(fuse_req_t req, fuse_ino_t, const char* data, size_t size, off_t off,
              fuse_file_info* fi) {
  OpenFile* f = of(fi);
  if (!f->writable) return (void)fuse_reply_err(req, EBADF);
  uint64_t dsize = f->dev->size();
  if (off < 0) return (void)fuse_reply_err(req, EINVAL);
  if (static_cast<uint64_t>(off) >= dsize && size > 0) return (void)fuse_reply_err(req, ENOSPC);
  size_t n = static_cast<size_t>(std::min<uint64_t>(size, dsize - static_cast<uint64_t>(off)));
  // O_SYNC/O_DSYNC opens (and RWF_DSYNC writes arrive with those flags) are FUA.
  bool fua = (fi->flags & (O_SYNC | O_DSYNC)) != 0;
  Status s = f->dev->write(static_cast<uint64_t>(off),
                           std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), n), fua);
  if (!s.ok()) {
    log::warn("fuse: write {} bytes at {}: {}", n, off, s.to_string());
    return (void)fuse_reply_err(req, err_of(s));
  }
  fuse_reply_write(req, n);
}

void op_flush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  // close(): make what this open wrote durable, as a block device's last close does.
  OpenFile* f = of(fi);
  Status s = f->writable ? f->dev->flush() : Status::Ok();
  fuse_reply_err(req, s.ok() ? 0 : err_of(s));
}

void op_fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info* fi) {
  // loop turns REQ_PREFLUSH/FUA into vfs_fsync: the device's flush.
  Status s = of(fi)->dev->flush();
  fuse_reply_err(req, s.ok() ? 0 : err_of(s));
}

void op_fallocate(fuse_req_t req, fuse_ino_t, int mode, off_t off, off_t len, fuse_file_info* fi) {
  OpenFile* f = of(fi);
  if (!f->writable) return (void)fuse_reply_err(req, EBADF);
  if (off < 0 || len <= 0) return (void)fuse_reply_err(req, EINVAL);
  uint64_t dsize = f->dev->size();
  uint64_t o = static_cast<uint64_t>(off), l = static_cast<uint64_t>(len);
  if (o >= dsize) return (void)fuse_reply_err(req, mode == 0 ? EFBIG : 0);
  l = std::min(l, dsize - o);
  Status s;
  if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
    // A punched range of a regular file reads as zeroes, and loop sends both
    // REQ_OP_DISCARD and REQ_OP_WRITE_ZEROES (unmap allowed) this way: so
    // this is a zero-out that may deallocate, never an advisory discard.
    s = f->dev->write_zeroes(o, l, false, /*may_unmap=*/true);
  } else if (mode == FALLOC_FL_ZERO_RANGE || mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
    s = f->dev->write_zeroes(o, l, false, /*may_unmap=*/false);  // loop's REQ_NOUNMAP zero-out
  } else if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
    s = Status::Ok();  // preallocation: a device is always fully "allocated"
  } else {
    return (void)fuse_reply_err(req, EOPNOTSUPP);
  }
  fuse_reply_err(req, s.ok() ? 0 : err_of(s));
}

// SEEK_DATA / SEEK_HOLE from the device's allocation map, so cp --sparse,
// qemu-img and dd conv=sparse skip what reads as zeroes: zeroed ranges count
// as holes as well as unallocated ones (both read as zero). Past the data the
// end of the file is the hole, as for any file.
void op_lseek(fuse_req_t req, fuse_ino_t, off_t off, int whence, fuse_file_info* fi) {
  OpenFile* f = of(fi);
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return (void)fuse_reply_err(req, EINVAL);
  uint64_t dsize = f->dev->size();
  if (off < 0 || static_cast<uint64_t>(off) >= dsize) return (void)fuse_reply_err(req, ENXIO);
  uint64_t pos = static_cast<uint64_t>(off);
  AllocMap m;
  while (pos < dsize) {
    Status s = f->dev->allocation(pos, dsize - pos, m);
    if (!s.ok()) {
      log::warn("fuse: lseek at {}: {}", pos, s.to_string());
      return (void)fuse_reply_err(req, err_of(s));
    }
    for (const AllocRun& r : m) {
      bool data = r.kind == AllocKind::kData;
      if (data == (whence == SEEK_DATA)) return (void)fuse_reply_lseek(req, static_cast<off_t>(pos));
      pos += r.length;
    }
  }
  if (whence == SEEK_HOLE) return (void)fuse_reply_lseek(req, static_cast<off_t>(dsize));
  fuse_reply_err(req, ENXIO);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs st{};
  st.f_bsize = 4096;
  st.f_frsize = 4096;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops o{};
  o.init = op_init;
  o.lookup = op_lookup;
  o.getattr = op_getattr;
  o.setattr = op_setattr;
  o.readdir = op_readdir;
  o.open = op_open;
  o.release = op_release;
  o.read = op_read;
  o.write = op_write;
  o.flush = op_flush;
  o.fsync = op_fsync;
  o.fallocate = op_fallocate;
  o.lseek = op_lseek;
  o.statfs = op_statfs;
  return o;
}();

// st_dev of the filesystem mounted at `path`, from /proc/self/mountinfo.
dev_t mount_dev(const std::string& path) {
  char real[PATH_MAX];
  std::string want = ::realpath(path.c_str(), real) ? real : path;
  std::ifstream mi("/proc/self/mountinfo");
  std::string line;
  dev_t found = 0;
  while (std::getline(mi, line)) {
    // id parent major:minor root mountpoint ...
    std::istringstream ls(line);
    std::string id, parent, mm, root, mnt;
    ls >> id >> parent >> mm >> root >> mnt;
    if (mnt != want) continue;
    unsigned ma = 0, mi_ = 0;
    if (std::sscanf(mm.c_str(), "%u:%u", &ma, &mi_) == 2) found = makedev(ma, mi_);  // last wins
  }
  return found;
}

}  // namespace

FuseExport::FuseExport(ExportProvider& provider, std::string mountpoint, FuseExportOptions opts)
    : provider_(provider), mountpoint_(std::move(mountpoint)), opts_(opts) {}

FuseExport::~FuseExport() { stop(); }

void FuseExport::track(void* open_file, bool add) {
  std::lock_guard lk(mu_);
  if (add)
    open_files_.insert(open_file);
  else
    open_files_.erase(open_file);
}

uint64_t FuseExport::ino_for(const std::string& name) {
  std::lock_guard lk(mu_);
  auto it = ino_by_name_.find(name);
  if (it != ino_by_name_.end()) return it->second;
  uint64_t ino = next_ino_++;
  ino_by_name_[name] = ino;
  name_by_ino_[ino] = name;
  return ino;
}

bool FuseExport::name_for(uint64_t ino, std::string* name) {
  std::lock_guard lk(mu_);
  auto it = name_by_ino_.find(ino);
  if (it == name_by_ino_.end()) return false;
  *name = it->second;
  return true;
}

Status FuseExport::start() {
  start_time_ = time(nullptr);
  struct stat st;
  if (::stat(mountpoint_.c_str(), &st) != 0) return ErrnoStatus("fuse mountpoint " + mountpoint_);
  if (!S_ISDIR(st.st_mode)) return Invalid("fuse mountpoint " + mountpoint_ + " is not a directory");
  std::vector<std::string> args = {"udm", "-o", "fsname=udm,subtype=udm,default_permissions"};
  if (opts_.allow_other) {
    args.push_back("-o");
    args.push_back("allow_other");
  }
  args.push_back("-o");
  args.push_back("max_read=" + std::to_string(kMaxRead));
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  fuse_args fa = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  se_ = fuse_session_new(&fa, &kOps, sizeof kOps, this);
  fuse_opt_free_args(&fa);
  if (!se_) return IoError("fuse_session_new failed (bad options?)");
  if (fuse_session_mount(se_, mountpoint_.c_str()) != 0) {
    fuse_session_destroy(se_);
    se_ = nullptr;
    return IoError("cannot mount FUSE on " + mountpoint_ + " (is /dev/fuse there? are we root?)");
  }
  mounted_ = true;
  // Not stat(): a request to our own mount before the loop runs would hang.
  conn_dev_ = mount_dev(mountpoint_);
  unsigned threads = opts_.threads ? opts_.threads : 16;
  loop_ = std::thread([this, threads] {
    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    fuse_loop_cfg_set_max_threads(cfg, threads);
    fuse_loop_cfg_set_idle_threads(cfg, threads);
    int rc = fuse_session_loop_mt(se_, cfg);
    fuse_loop_cfg_destroy(cfg);
    if (rc != 0 && !fuse_session_exited(se_)) log::warn("fuse: session loop ended with {}", rc);
    loop_done_ = true;
  });
  return Status::Ok();
}

void FuseExport::stop() {
  if (!se_) return;
  fuse_session_exit(se_);
  if (mounted_) {
    // Lazy unmount: a loop device may still hold the file open.
    fuse_session_unmount(se_);
    mounted_ = false;
  }
  // With the file still open (a bound loop device) the kernel keeps the
  // connection alive after a lazy unmount; abort it so the workers return.
  for (int i = 0; i < 40 && !loop_done_; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (!loop_done_ && conn_dev_) {
    std::string dir = "/sys/fs/fuse/connections";
    if (::access((dir + "/" + std::to_string(minor(conn_dev_))).c_str(), F_OK) != 0)
      ::mount("fusectl", dir.c_str(), "fusectl", 0, nullptr);  // as systemd would have
    std::ofstream abort_file(dir + "/" + std::to_string(minor(conn_dev_)) + "/abort");
    abort_file << "1";
  }
  if (loop_.joinable()) loop_.join();
  fuse_session_destroy(se_);
  se_ = nullptr;
  // Opens the kernel never released (connection aborted under a loop device).
  std::lock_guard lk(mu_);
  for (void* f : open_files_) delete static_cast<OpenFile*>(f);
  open_files_.clear();
}

}  // namespace udm
