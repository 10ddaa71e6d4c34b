#include "remote/cache_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "util/endian.h"
#include "util/fd_io.h"
#include "util/log.h"

namespace udm::remote {
namespace {

constexpr char kMagic[8] = {'U', 'D', 'M', 'R', 'C', '0', '0', '1'};
constexpr uint64_t kHeader = 4096;
constexpr size_t kMaxKey = 4000;

Status sync_fd(int fd, const std::string& what) {
  if (::fdatasync(fd) != 0) return ErrnoStatus("fdatasync " + what);
  return Status::Ok();
}

void sync_dir(const std::string& dir) {
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

// The state header: magic, size (8), block size (16), flags (20, bit 0 =
// verified), key length (24), key (28...). False if it is not a valid one.
struct Header {
  std::string key;
  uint64_t size = 0;
  uint32_t bs = 0;
  bool verified = false;
};
bool parse_header(const std::vector<uint8_t>& h, Header* out) {
  if (h.size() < kHeader || std::memcmp(h.data(), kMagic, 8) != 0) return false;
  uint32_t klen = le32(&h[24]);
  if (klen > kMaxKey) return false;
  out->key.assign(reinterpret_cast<const char*>(&h[28]), klen);
  out->size = le64(&h[8]);
  out->bs = le32(&h[16]);
  out->verified = le32(&h[20]) & 1;
  return out->bs >= 4096 && (out->bs & (out->bs - 1)) == 0 && out->size > 0;
}

int64_t now_seconds() { return int64_t(::time(nullptr)); }

}  // namespace

bool is_object_id(const std::string& s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string sha256_hex(std::span<const uint8_t> data) {
  unsigned char md[32];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  static const char* hx = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; i++) {
    s.push_back(hx[md[i] >> 4]);
    s.push_back(hx[md[i] & 15]);
  }
  return s;
}

// ---------------------------------------------------------------- CacheObject

CacheObject::~CacheObject() {
  if (data_fd_ >= 0) ::close(data_fd_);
  if (state_fd_ >= 0) ::close(state_fd_);
}

std::string CacheObject::id() const { return name_.substr(name_.rfind('/') + 1); }

void CacheObject::touch_file() {
  int64_t now = now_seconds(), last = last_touch_.load();
  if (now - last < 60 || !last_touch_.compare_exchange_strong(last, now)) return;
  ::futimens(state_fd_, nullptr);  // "last use" for `udm cache ls` and the LRU order after a restart
}

bool CacheObject::present(uint64_t b) const {
  std::lock_guard lk(bits_mu_);
  return b < nblocks_ && (bits_[b / 8] >> (b % 8)) & 1;
}

uint64_t CacheObject::present_count() const {
  std::lock_guard lk(bits_mu_);
  return present_;
}

bool CacheObject::verified() const {
  std::lock_guard lk(bits_mu_);
  return verified_;
}

Result<bool> CacheObject::read_if_present(uint64_t b, uint64_t off_in_block, std::span<uint8_t> out) {
  std::shared_lock io(io_mu_);  // eviction waits until the copy is done
  if (!present(b)) return false;
  UDM_TRY(pread_all(data_fd_, out.data(), out.size(), b * bs_ + off_in_block, name_ + ".data"));
  store_->touch(this, b);
  touch_file();
  return true;
}

Status CacheObject::set_bits_locked(uint64_t first, uint64_t count, bool value) {
  for (uint64_t b = first; b < first + count; b++) {
    uint8_t m = uint8_t(1u << (b % 8));
    bool was = bits_[b / 8] & m;
    if (was == value) continue;
    if (value) {
      bits_[b / 8] |= m;
      present_++;
    } else {
      bits_[b / 8] &= uint8_t(~m);
      present_--;
    }
  }
  uint64_t lo = first / 8, hi = (first + count - 1) / 8;
  return pwrite_all(state_fd_, &bits_[lo], hi - lo + 1, kHeader + lo, name_ + ".state");
}

Status CacheObject::store(uint64_t first_block, std::span<const uint8_t> data) {
  if (data.empty()) return Status::Ok();
  uint64_t count = (data.size() + bs_ - 1) / bs_;
  if (first_block + count > nblocks_) return Invalid("cache: store past the object's end");
  {
    std::shared_lock io(io_mu_);
    UDM_TRY(pwrite_all(data_fd_, data.data(), data.size(), first_block * bs_, name_ + ".data"));
    UDM_TRY(sync_fd(data_fd_, name_ + ".data"));  // data durable before any bit says so
    {
      std::lock_guard lk(bits_mu_);
      UDM_TRY(set_bits_locked(first_block, count, true));
    }
    UDM_TRY(sync_fd(state_fd_, name_ + ".state"));
  }
  store_->added(this, first_block, count);
  return Status::Ok();
}

Status CacheObject::evict(const std::vector<uint64_t>& blocks) {
  std::unique_lock io(io_mu_);
  {
    std::lock_guard lk(bits_mu_);
    for (uint64_t b : blocks) UDM_TRY(set_bits_locked(b, 1, false));
    // "verified" holds for the bytes that were hashed: blocks fetched again
    // are hashed again once the object is whole.
    if (verified_) UDM_TRY(set_verified_locked(false));
  }
  UDM_TRY(sync_fd(state_fd_, name_ + ".state"));  // cleared durably before the data goes
  for (uint64_t b : blocks) {
    uint64_t len = std::min<uint64_t>(bs_, size_ - b * bs_);
    if (::fallocate(data_fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(b * bs_), off_t(len)) != 0)
      return ErrnoStatus("punch " + name_ + ".data");
  }
  return Status::Ok();
}

std::vector<uint64_t> CacheObject::present_blocks_over_holes() const {
  std::shared_lock io(io_mu_);
  std::vector<uint64_t> out;
  for (uint64_t b = 0; b < nblocks_; b++) {
    if (!present(b)) continue;
    off_t start = off_t(b * bs_), end = off_t(std::min<uint64_t>(size_, (b + 1) * bs_));
    off_t d = ::lseek(data_fd_, start, SEEK_DATA);
    off_t h = ::lseek(data_fd_, start, SEEK_HOLE);
    // SEEK_DATA past the start (or ENXIO: no data after it): a hole at the
    // start; SEEK_HOLE before the end: a hole inside. Filesystems without
    // hole reporting answer "data" everywhere.
    if ((d < 0 && errno == ENXIO) || (d >= 0 && d != start) || (h >= 0 && h < end)) out.push_back(b);
  }
  return out;
}

void CacheObject::pin(uint64_t first, uint64_t count) {
  std::lock_guard lk(store_->mu_);
  for (uint64_t b = first; b < first + count && b < nblocks_; b++) {
    auto& p = store_->pinned_[{this, b}];
    if (p.count++ > 0) continue;
    auto w = store_->where_.find({this, b});
    if (w != store_->where_.end()) {  // cached: leaves the LRU, stays counted
      store_->lru_.erase(w->second);
      store_->where_.erase(w);
      p.cached = true;
    }
  }
}

void CacheObject::unpin(uint64_t first, uint64_t count) {
  std::lock_guard lk(store_->mu_);
  for (uint64_t b = first; b < first + count && b < nblocks_; b++) {
    auto it = store_->pinned_.find({this, b});
    if (it == store_->pinned_.end() || --it->second.count > 0) continue;
    if (it->second.cached) {  // back into the LRU as recently used
      store_->lru_.push_front({this, b});
      store_->where_[{this, b}] = store_->lru_.begin();
    }
    store_->pinned_.erase(it);
  }
}

bool CacheObject::pinned(uint64_t b) const {
  std::lock_guard lk(store_->mu_);
  return store_->pinned_.count({const_cast<CacheObject*>(this), b}) > 0;
}

Status CacheObject::verify_sha256(const std::string& hex, const std::string& what) {
  std::shared_lock io(io_mu_);
  if (present_count() != nblocks_) return Status::Ok();
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<uint8_t> buf(1 << 20);
  Status st;
  for (uint64_t off = 0; off < size_ && st.ok(); off += buf.size()) {
    size_t n = size_t(std::min<uint64_t>(buf.size(), size_ - off));
    st = pread_all(data_fd_, buf.data(), n, off, name_ + ".data");
    if (st.ok()) EVP_DigestUpdate(ctx, buf.data(), n);
  }
  unsigned char md[32];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, md, &n);
  EVP_MD_CTX_free(ctx);
  UDM_TRY(st);
  static const char* hx = "0123456789abcdef";
  std::string got;
  for (unsigned i = 0; i < n; i++) {
    got.push_back(hx[md[i] >> 4]);
    got.push_back(hx[md[i] & 15]);
  }
  std::lock_guard lk(bits_mu_);
  if (got != hex) {
    UDM_TRY(set_bits_locked(0, nblocks_, false));
    if (verified_) UDM_TRY(set_verified_locked(false));
    (void)sync_fd(state_fd_, name_ + ".state");
    return Status::Error(EIO, what + ": blob content does not match its digest (sha256:" + got +
                                  "); cached copy dropped");
  }
  UDM_TRY(set_verified_locked(true));
  return sync_fd(state_fd_, name_ + ".state");
}

Status CacheObject::set_verified_locked(bool v) {
  verified_ = v;
  uint8_t flags[4] = {uint8_t(v ? 1 : 0), 0, 0, 0};  // little-endian flags word
  return pwrite_all(state_fd_, flags, 4, 20, name_ + ".state");
}

// ---------------------------------------------------------------- CacheStore

namespace {
std::mutex g_stores_mu;
std::map<std::string, std::weak_ptr<CacheStore>> g_stores;
}  // namespace

Result<std::shared_ptr<CacheStore>> CacheStore::open(const std::string& dir, uint64_t cap_bytes) {
  std::lock_guard g(g_stores_mu);
  if (auto it = g_stores.find(dir); it != g_stores.end()) {
    if (auto s = it->second.lock()) {
      s->set_cap(cap_bytes);
      return s;
    }
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoStatus("cache dir " + dir);
  std::shared_ptr<CacheStore> s(new CacheStore());
  s->dir_ = dir;
  s->cap_ = cap_bytes;
  s->lock_fd_ = ::open((dir + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (s->lock_fd_ < 0) return ErrnoStatus("cache dir " + dir + "/lock");
  if (::flock(s->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    log::warn("remote cache {} is used by another process: this one keeps fetched blocks in memory only", dir);
    return std::shared_ptr<CacheStore>();
  }
  {  // who owns it, for `udm cache` and the operator (the flock is what counts)
    std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(s->lock_fd_, 0) == 0) (void)pwrite_all(s->lock_fd_, pid.data(), pid.size(), 0, dir + "/lock");
  }
  // Re-index what an earlier run left (oldest-unknown: at the cold end of the LRU).
  DIR* d = ::opendir(dir.c_str());
  if (!d) return ErrnoStatus("cache dir " + dir);
  std::vector<std::string> states, datas;
  while (auto* e = ::readdir(d)) {
    // Only names the store makes (64 hex digits): other files are left alone.
    std::string n = e->d_name;
    if (n.size() == 64 + 6 && n.substr(64) == ".state" && is_object_id(n.substr(0, 64))) states.push_back(n.substr(0, 64));
    if (n.size() == 64 + 5 && n.substr(64) == ".data" && is_object_id(n.substr(0, 64))) datas.push_back(n.substr(0, 64));
  }
  ::closedir(d);
  // Most recently used objects first: loaded blocks enter at the cold end in
  // this order, so the LRU starts from the last run's order of use, by object.
  std::vector<std::pair<int64_t, std::string>> by_use;
  for (auto& name : states) {
    struct stat st {};
    ::stat((dir + "/" + name + ".state").c_str(), &st);
    by_use.push_back({-int64_t(st.st_mtim.tv_sec), name});
  }
  std::sort(by_use.begin(), by_use.end());
  states.clear();
  for (auto& [t, name] : by_use) states.push_back(name);
  for (auto& name : states) {
    auto o = s->load(name, "", 0, 0, false);
    if (!o.ok()) {
      log::warn("remote cache: dropping {}: {}", name, o.status().to_string());
      ::unlink((dir + "/" + name + ".state").c_str());
      ::unlink((dir + "/" + name + ".data").c_str());
    }
  }
  for (auto& name : datas)
    if (!s->objects_.count(name)) ::unlink((dir + "/" + name + ".data").c_str());
  g_stores[dir] = s;
  return s;
}

CacheStore::~CacheStore() {
  objects_.clear();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Result<std::shared_ptr<CacheObject>> CacheStore::load(const std::string& name, const std::string& key, uint64_t size,
                                                      uint32_t bs, bool create) {
  std::string base = dir_ + "/" + name;
  std::shared_ptr<CacheObject> o(new CacheObject());
  o->store_ = this;
  o->name_ = base;
  int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0);
  o->data_fd_ = ::open((base + ".data").c_str(), flags, 0600);
  if (o->data_fd_ < 0) return ErrnoStatus("open " + base + ".data");
  o->state_fd_ = ::open((base + ".state").c_str(), flags, 0600);
  if (o->state_fd_ < 0) return ErrnoStatus("open " + base + ".state");
  std::vector<uint8_t> h(kHeader);
  struct stat st;
  ::fstat(o->state_fd_, &st);
  bool fresh = true;
  if (uint64_t(st.st_size) >= kHeader) {
    UDM_TRY(pread_all(o->state_fd_, h.data(), kHeader, 0, base + ".state"));
    Header hd;
    if (parse_header(h, &hd) && (key.empty() || (hd.key == key && hd.size == size && hd.bs == bs))) {
      o->key_ = hd.key;
      o->size_ = hd.size;
      o->bs_ = hd.bs;
      o->verified_ = hd.verified;
      fresh = false;
    }
  }
  if (fresh) {
    if (!create) return Corrupt("bad state header");
    // Bits cleared durably first, then the data file emptied and sized.
    if (key.size() > kMaxKey) return Invalid("cache key too long");
    std::fill(h.begin(), h.end(), 0);
    std::memcpy(h.data(), kMagic, 8);
    put_le64(&h[8], size);
    put_le32(&h[16], bs);
    put_le32(&h[24], uint32_t(key.size()));
    std::memcpy(&h[28], key.data(), key.size());
    if (::ftruncate(o->state_fd_, 0) != 0) return ErrnoStatus("truncate " + base + ".state");
    UDM_TRY(pwrite_all(o->state_fd_, h.data(), kHeader, 0, base + ".state"));
    uint64_t nb = (size + bs - 1) / bs;
    std::vector<uint8_t> zero((nb + 7) / 8, 0);
    UDM_TRY(pwrite_all(o->state_fd_, zero.data(), zero.size(), kHeader, base + ".state"));
    UDM_TRY(sync_fd(o->state_fd_, base + ".state"));
    if (::ftruncate(o->data_fd_, 0) != 0 || ::ftruncate(o->data_fd_, off_t(size)) != 0)
      return ErrnoStatus("size " + base + ".data");
    sync_dir(dir_);
    o->key_ = key;
    o->size_ = size;
    o->bs_ = bs;
  }
  o->nblocks_ = (o->size_ + o->bs_ - 1) / o->bs_;
  o->bits_.assign((o->nblocks_ + 7) / 8, 0);
  if (!fresh) {
    struct stat ds;
    ::fstat(o->data_fd_, &ds);
    if (uint64_t(ds.st_size) != o->size_) return Corrupt("data file has the wrong size");
    Status rs = pread_all(o->state_fd_, o->bits_.data(), o->bits_.size(), kHeader, base + ".state");
    if (!rs.ok()) return Corrupt("short bitmap");
    uint64_t tail = o->nblocks_ % 8;
    if (tail) o->bits_.back() &= uint8_t((1u << tail) - 1);
    for (uint64_t b = 0; b < o->nblocks_; b++)
      if ((o->bits_[b / 8] >> (b % 8)) & 1) o->present_++;
  }
  {
    std::lock_guard lk(mu_);
    // Replace an older object of the same name (its blocks leave the LRU).
    if (auto it = objects_.find(name); it != objects_.end()) {
      CacheObject* old = it->second.get();
      for (auto w = where_.begin(); w != where_.end();) {
        if (w->first.first == old) {
          lru_.erase(w->second);
          used_ -= old->bs_;
          w = where_.erase(w);
        } else {
          ++w;
        }
      }
      for (auto p = pinned_.begin(); p != pinned_.end();) {
        if (p->first.first == old) {
          if (p->second.cached) used_ -= old->bs_;
          p = pinned_.erase(p);
        } else {
          ++p;
        }
      }
    }
    for (uint64_t b = 0; b < o->nblocks_; b++) {
      if (!((o->bits_[b / 8] >> (b % 8)) & 1)) continue;
      lru_.push_back({o.get(), b});
      where_[{o.get(), b}] = std::prev(lru_.end());
      used_ += o->bs_;
    }
    objects_[name] = o;
  }
  return o;
}

Result<std::shared_ptr<CacheObject>> CacheStore::object(const std::string& key, uint64_t size, uint32_t bs) {
  std::string name = sha256_hex(std::span(reinterpret_cast<const uint8_t*>(key.data()), key.size()));
  {
    std::lock_guard lk(mu_);
    auto it = objects_.find(name);
    if (it != objects_.end() && it->second->key_ == key && it->second->size_ == size && it->second->bs_ == bs) {
      it->second->touch_file();
      return it->second;
    }
  }
  return load(name, key, size, bs, true);
}

std::shared_ptr<CacheObject> CacheStore::existing(const std::string& key) {
  std::string name = sha256_hex(std::span(reinterpret_cast<const uint8_t*>(key.data()), key.size()));
  std::lock_guard lk(mu_);
  auto it = objects_.find(name);
  if (it != objects_.end() && it->second->key_ == key) {
    it->second->touch_file();
    return it->second;
  }
  return nullptr;
}

std::vector<std::shared_ptr<CacheObject>> CacheStore::objects() const {
  std::lock_guard lk(mu_);
  std::vector<std::shared_ptr<CacheObject>> v;
  for (auto& [name, o] : objects_) v.push_back(o);
  return v;
}

Status CacheStore::drop_blocks(CacheObject* o, const std::vector<uint64_t>& blocks) {
  if (blocks.empty()) return Status::Ok();
  {
    std::lock_guard lk(mu_);
    for (uint64_t b : blocks) {
      if (b >= o->nblocks_) return Invalid("cache: block past the object's end");
      if (pinned_.count({o, b})) return Status::Error(EBUSY, o->key_ + ": block " + std::to_string(b) + " is pinned");
    }
    for (uint64_t b : blocks) {
      auto w = where_.find({o, b});
      if (w == where_.end()) continue;
      lru_.erase(w->second);
      where_.erase(w);
      used_ -= o->bs_;
    }
  }
  return o->evict(blocks);
}

Status CacheStore::remove(CacheObject* o) {
  std::shared_ptr<CacheObject> keep;
  {
    std::lock_guard lk(mu_);
    for (auto& [k, p] : pinned_)
      if (k.first == o) return Status::Error(EBUSY, o->key_ + ": pinned by an open device");
    for (auto w = where_.begin(); w != where_.end();) {
      if (w->first.first == o) {
        lru_.erase(w->second);
        used_ -= o->bs_;
        w = where_.erase(w);
      } else {
        ++w;
      }
    }
    if (auto it = objects_.find(o->id()); it != objects_.end() && it->second.get() == o) {
      keep = it->second;
      objects_.erase(it);
    }
  }
  std::unique_lock io(o->io_mu_);
  {
    std::lock_guard lk(o->bits_mu_);
    if (o->nblocks_) UDM_TRY(o->set_bits_locked(0, o->nblocks_, false));
  }
  UDM_TRY(sync_fd(o->state_fd_, o->name_ + ".state"));  // no bit covers the data from here on
  if (::unlink((o->name_ + ".state").c_str()) != 0 && errno != ENOENT) return ErrnoStatus("unlink " + o->name_ + ".state");
  if (::unlink((o->name_ + ".data").c_str()) != 0 && errno != ENOENT) return ErrnoStatus("unlink " + o->name_ + ".data");
  sync_dir(dir_);
  return Status::Ok();
}

Result<CacheStateInfo> read_cache_state(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(path);
  std::vector<uint8_t> h(kHeader);
  Status st = pread_all(fd, h.data(), kHeader, 0, path);
  Header hd;
  if (!st.ok() || !parse_header(h, &hd)) {
    ::close(fd);
    return Corrupt(path + ": not a cache state file (bad or short header)");
  }
  CacheStateInfo i;
  i.key = hd.key;
  i.size = hd.size;
  i.block_size = hd.bs;
  i.verified = hd.verified;
  i.blocks = (hd.size + hd.bs - 1) / hd.bs;
  std::vector<uint8_t> bits((i.blocks + 7) / 8);
  st = pread_all(fd, bits.data(), bits.size(), kHeader, path);
  ::close(fd);
  if (!st.ok()) return Corrupt(path + ": short bitmap");
  for (uint64_t b = 0; b < i.blocks; b++) {
    if (!((bits[b / 8] >> (b % 8)) & 1)) continue;
    i.present++;
    i.bytes += std::min<uint64_t>(hd.bs, hd.size - b * hd.bs);
  }
  return i;
}

void CacheStore::touch(CacheObject* o, uint64_t b) {
  std::lock_guard lk(mu_);
  auto it = where_.find({o, b});
  if (it != where_.end()) lru_.splice(lru_.begin(), lru_, it->second);
}

uint64_t CacheStore::used_bytes() const {
  std::lock_guard lk(mu_);
  return used_;
}

void CacheStore::added(CacheObject* o, uint64_t first, uint64_t count) {
  std::map<CacheObject*, std::vector<uint64_t>> victims;
  {
    std::lock_guard lk(mu_);
    for (uint64_t b = first; b < first + count; b++) {
      if (auto p = pinned_.find({o, b}); p != pinned_.end()) {  // never in the LRU
        if (!p->second.cached) used_ += o->bs_;
        p->second.cached = true;
        continue;
      }
      auto it = where_.find({o, b});
      if (it != where_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second);
      } else {
        lru_.push_front({o, b});
        where_[{o, b}] = lru_.begin();
        used_ += o->bs_;
      }
    }
    while (used_ > cap_ && !lru_.empty()) {
      Entry e = lru_.back();
      lru_.pop_back();
      where_.erase({e.obj, e.block});
      used_ -= e.obj->bs_;
      victims[e.obj].push_back(e.block);
    }
  }
  for (auto& [obj, blocks] : victims) {
    Status st = obj->evict(blocks);
    if (!st.ok()) log::warn("remote cache: eviction: {}", st.to_string());
  }
}

}  // namespace udm::remote
