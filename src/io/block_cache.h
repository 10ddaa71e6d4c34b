// One cache of decoded blocks for every reader that decodes (update's diff
// chunks, ZFile blocks, LSMT layer data): bounded by bytes, LRU, sharded so
// the lock is short on several cores, and single-flight — a block is decoded
// once however many readers ask for it at the same time; the others wait for
// that decode and share its result (or its error).
//
// Keys are (owner, block): each user takes an owner id from new_owner() (one
// per open image) so users share one budget without colliding.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "util/status.h"

namespace udm {

class BlockCache {
 public:
  using Block = std::shared_ptr<const std::vector<uint8_t>>;
  using Loader = std::function<Result<std::vector<uint8_t>>()>;

  explicit BlockCache(size_t capacity_bytes);
  // The process-wide cache (128 MiB) most users share.
  static std::shared_ptr<BlockCache> shared();
  static uint64_t new_owner();

  // The cached block, or load() run once for all concurrent callers of the
  // same key. A failed load is not cached: its waiters get its error, the
  // next call tries again.
  Result<Block> get(uint64_t owner, uint64_t block, const Loader& load);
  // Cached block or null; never loads.
  Block peek(uint64_t owner, uint64_t block);
  // Inserts (replaces) a block, e.g. one decoded as a side effect.
  void put(uint64_t owner, uint64_t block, Block b);
  // Drops every block of an owner (an image closed or changed).
  void drop_owner(uint64_t owner);

  struct Stats {
    uint64_t hits = 0, misses = 0, waits = 0, evictions = 0, bytes = 0;
  };
  Stats stats() const;
  size_t capacity() const { return cap_per_shard_ * kShards; }

 private:
  struct Key {
    uint64_t owner, block;
    bool operator==(const Key& o) const { return owner == o.owner && block == o.block; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      uint64_t h = k.owner * 0x9E3779B97F4A7C15ull ^ (k.block + 0x632BE59BD9B4E019ull + (k.owner << 6));
      return static_cast<size_t>(h ^ (h >> 29));
    }
  };
  // A block being loaded: waiters sleep on the shard's condition variable.
  struct Flight {
    bool done = false;
    Status status;
    Block block;
  };
  struct Shard {
    mutable std::mutex mu;
    std::condition_variable cv;
    std::list<std::pair<Key, Block>> lru;  // front = newest
    std::unordered_map<Key, std::list<std::pair<Key, Block>>::iterator, KeyHash> map;
    std::unordered_map<Key, std::shared_ptr<Flight>, KeyHash> flights;
    size_t bytes = 0;
  };
  static constexpr int kShards = 16;
  Shard& shard(const Key& k) { return shards_[KeyHash{}(k) % kShards]; }
  void insert_locked(Shard& s, const Key& k, Block b);

  Shard shards_[kShards];
  size_t cap_per_shard_;
  std::atomic<uint64_t> hits_{0}, misses_{0}, waits_{0}, evictions_{0};
};

}  // namespace udm
