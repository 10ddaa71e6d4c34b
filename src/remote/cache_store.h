// The persistent block cache of remote objects under --cache-dir (docs/remote.md).
//
// One object (a blob digest, or URL + validator + size) is two files named by
// the sha256 of its key: KEY.data (sparse, the object's bytes at their
// offsets) and KEY.state (a 4 KiB header + one bit per block). A block's bit
// is set only after its data is durable (pwrite, fdatasync, then the bit,
// then fdatasync of the state), and cleared durably before its data is
// punched out, so a crash or SIGKILL can lose blocks (refetched later) but a
// set bit always covers the right bytes. Eviction is LRU by block over every
// object of the directory, keeping the total under --cache-size.
// One process owns a directory at a time (flock on DIR/lock, which also holds
// the owner's PID for `udm cache`); another process gets no store and works
// from memory. `udm cache ls|verify|evict` (cache_admin.h) read and change a
// directory through this class too.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "util/status.h"

namespace udm::remote {

class CacheStore;

class CacheObject {
 public:
  ~CacheObject();
  uint64_t size() const { return size_; }
  uint32_t block_size() const { return bs_; }
  uint64_t blocks() const { return nblocks_; }
  bool present(uint64_t b) const;
  uint64_t present_count() const;
  bool verified() const;
  // Copies [off_in_block, +out.size()) of block b into out if the block is
  // cached; false if it is not (never partial data).
  Result<bool> read_if_present(uint64_t b, uint64_t off_in_block, std::span<uint8_t> out);
  // Stores whole blocks starting at first_block (the object's last block may
  // be short); durable before the blocks are marked present.
  Status store(uint64_t first_block, std::span<const uint8_t> data);
  // Hashes the whole object (all blocks present) and compares with hex
  // sha256; on success records "verified", on mismatch drops every block.
  Status verify_sha256(const std::string& hex, const std::string& what);
  const std::string& key() const { return key_; }
  // The file names' stem (sha256 of the key): what `udm cache` calls the object's id.
  std::string id() const;
  // Present blocks whose bytes in the data file are (partly) a hole: the
  // store writes every block it marks, so such a bit lost its data.
  std::vector<uint64_t> present_blocks_over_holes() const;
  // Pinned blocks are never evicted (format metadata, BlockDevice::keep_cached);
  // pins are counted (several devices may pin one block) and held in memory
  // only: a reader pins again at each open. A pinned block still counts
  // against the cap. Blocks may be pinned before they are cached.
  void pin(uint64_t first_block, uint64_t count);
  void unpin(uint64_t first_block, uint64_t count);
  bool pinned(uint64_t b) const;

 private:
  friend class CacheStore;
  CacheObject() = default;
  Status set_bits_locked(uint64_t first, uint64_t count, bool value);  // bits_mu_ held
  Status set_verified_locked(bool v);                                 // bits_mu_ held; the caller syncs
  Status evict(const std::vector<uint64_t>& blocks);
  CacheStore* store_ = nullptr;
  std::string key_, name_;
  uint64_t size_ = 0, nblocks_ = 0;
  uint32_t bs_ = 0;
  int data_fd_ = -1, state_fd_ = -1;
  mutable std::shared_mutex io_mu_;  // shared: reads, stores, hashing; exclusive: eviction
  mutable std::mutex bits_mu_;       // leaf
  std::vector<uint8_t> bits_;
  uint64_t present_ = 0;
  bool verified_ = false;
  std::atomic<int64_t> last_touch_{0};  // seconds; the state file's mtime is "last use"
  void touch_file();                    // futimens(state), at most once a minute
};

class CacheStore {
 public:
  // The store of a directory (one per directory per process), created if
  // needed. Null (no error) when another process owns the directory.
  static Result<std::shared_ptr<CacheStore>> open(const std::string& dir, uint64_t cap_bytes);
  ~CacheStore();
  // The object for key, created (or reset, if its size or block size
  // differ) as needed.
  Result<std::shared_ptr<CacheObject>> object(const std::string& key, uint64_t size, uint32_t block_size);
  // The object cached under key by any earlier open (null if none).
  std::shared_ptr<CacheObject> existing(const std::string& key);
  // A cached block was used (LRU).
  void touch(CacheObject* o, uint64_t b);
  void set_cap(uint64_t cap) { std::lock_guard lk(mu_); cap_ = cap; }
  uint64_t used_bytes() const;
  const std::string& dir() const { return dir_; }
  // Every object of the directory (loaded at open or since), by id.
  std::vector<std::shared_ptr<CacheObject>> objects() const;
  // Takes blocks out of the cache: out of the LRU, their bits cleared and
  // the state synced, then their data punched. Pinned blocks are refused.
  Status drop_blocks(CacheObject* o, const std::vector<uint64_t>& blocks);
  // Removes a whole object: bits cleared durably, then both files unlinked
  // and the directory synced. Refused (EBUSY) while a block is pinned.
  Status remove(CacheObject* o);

 private:
  friend class CacheObject;
  CacheStore() = default;
  void added(CacheObject* o, uint64_t first, uint64_t count);  // new blocks: LRU front, evict over cap
  Result<std::shared_ptr<CacheObject>> load(const std::string& name, const std::string& key, uint64_t size,
                                            uint32_t bs, bool create);
  std::string dir_;
  int lock_fd_ = -1;
  mutable std::mutex mu_;  // LRU and accounting; never held across I/O
  uint64_t cap_ = 0, used_ = 0;
  struct Entry {
    CacheObject* obj;
    uint64_t block;
  };
  std::list<Entry> lru_;  // front = most recent; pinned blocks are not in it
  std::map<std::pair<CacheObject*, uint64_t>, std::list<Entry>::iterator> where_;
  struct Pin {
    uint32_t count = 0;   // pins held
    bool cached = false;  // present and counted in used_ (out of the LRU)
  };
  std::map<std::pair<CacheObject*, uint64_t>, Pin> pinned_;
  std::map<std::string, std::shared_ptr<CacheObject>> objects_;  // by file name
};

std::string sha256_hex(std::span<const uint8_t> data);
// A name the store gives an object's files (64 lowercase hex digits); the
// store and `udm cache` leave every other file of the directory alone.
bool is_object_id(const std::string& s);

// What a KEY.state file says, read without changing anything (for `udm cache
// ls`, which may run while a daemon owns the directory).
struct CacheStateInfo {
  std::string key;
  uint64_t size = 0, blocks = 0, present = 0;
  uint64_t bytes = 0;  // of the object in present blocks (the last block may be short)
  uint32_t block_size = 0;
  bool verified = false;
};
Result<CacheStateInfo> read_cache_state(const std::string& state_path);

}  // namespace udm::remote
