#include "io/block_cache.h"

namespace udm {

BlockCache::BlockCache(size_t capacity_bytes) : cap_per_shard_(std::max<size_t>(capacity_bytes / kShards, 1)) {}

std::shared_ptr<BlockCache> BlockCache::shared() {
  static auto c = std::make_shared<BlockCache>(size_t{128} << 20);
  return c;
}

uint64_t BlockCache::new_owner() {
  static std::atomic<uint64_t> next{1};
  return next++;
}

void BlockCache::insert_locked(Shard& s, const Key& k, Block b) {
  if (auto it = s.map.find(k); it != s.map.end()) {
    s.bytes -= it->second->second->size();
    s.lru.erase(it->second);
    s.map.erase(it);
  }
  s.bytes += b->size();
  s.lru.emplace_front(k, std::move(b));
  s.map[k] = s.lru.begin();
  // Keep the newest block even if it alone exceeds the budget.
  while (s.bytes > cap_per_shard_ && s.lru.size() > 1) {
    auto& victim = s.lru.back();
    s.bytes -= victim.second->size();
    s.map.erase(victim.first);
    s.lru.pop_back();
    evictions_++;
  }
}

Result<BlockCache::Block> BlockCache::get(uint64_t owner, uint64_t block, const Loader& load) {
  Key k{owner, block};
  Shard& s = shard(k);
  std::shared_ptr<Flight> flight;
  {
    std::unique_lock lk(s.mu);
    if (auto it = s.map.find(k); it != s.map.end()) {
      s.lru.splice(s.lru.begin(), s.lru, it->second);
      hits_++;
      return it->second->second;
    }
    if (auto f = s.flights.find(k); f != s.flights.end()) {
      // Someone is decoding it: wait for their result.
      std::shared_ptr<Flight> other = f->second;
      waits_++;
      s.cv.wait(lk, [&] { return other->done; });
      if (!other->status.ok()) return other->status;
      return other->block;
    }
    misses_++;
    flight = std::make_shared<Flight>();
    s.flights[k] = flight;
  }
  Result<std::vector<uint8_t>> r = load();
  std::lock_guard lk(s.mu);
  s.flights.erase(k);
  flight->done = true;
  if (r.ok()) {
    flight->block = std::make_shared<const std::vector<uint8_t>>(std::move(r).value());
    insert_locked(s, k, flight->block);
  } else {
    flight->status = r.status();
  }
  s.cv.notify_all();
  if (!flight->status.ok()) return flight->status;
  return flight->block;
}

BlockCache::Block BlockCache::peek(uint64_t owner, uint64_t block) {
  Key k{owner, block};
  Shard& s = shard(k);
  std::lock_guard lk(s.mu);
  auto it = s.map.find(k);
  if (it == s.map.end()) return nullptr;
  s.lru.splice(s.lru.begin(), s.lru, it->second);
  hits_++;
  return it->second->second;
}

void BlockCache::put(uint64_t owner, uint64_t block, Block b) {
  if (!b) return;
  Key k{owner, block};
  Shard& s = shard(k);
  std::lock_guard lk(s.mu);
  insert_locked(s, k, std::move(b));
}

void BlockCache::drop_owner(uint64_t owner) {
  for (auto& s : shards_) {
    std::lock_guard lk(s.mu);
    for (auto it = s.lru.begin(); it != s.lru.end();) {
      if (it->first.owner == owner) {
        s.bytes -= it->second->size();
        s.map.erase(it->first);
        it = s.lru.erase(it);
      } else {
        ++it;
      }
    }
  }
}

BlockCache::Stats BlockCache::stats() const {
  Stats st{hits_.load(), misses_.load(), waits_.load(), evictions_.load(), 0};
  for (auto& s : shards_) {
    std::lock_guard lk(s.mu);
    st.bytes += s.bytes;
  }
  return st;
}

}  // namespace udm
