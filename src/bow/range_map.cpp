#include "bow/range_map.h"

namespace udm::bow {

const char* type_name(BlockType t) {
  switch (t) {
    case BlockType::kUnchanged: return "unchanged";
    case BlockType::kFree: return "free";
    case BlockType::kChanged: return "changed";
    case BlockType::kBackup: return "backup";
    case BlockType::kLog: return "log";
    case BlockType::kSector0: return "sector0";
    case BlockType::kIntent: return "intent";
  }
  return "?";
}

RangeMap::RangeMap(uint64_t blocks, BlockType initial) : blocks_(blocks) {
  if (blocks_ > 0) insert_seg(0, blocks_, initial);
}

void RangeMap::erase_seg(Map::iterator it) {
  counts_[static_cast<size_t>(it->second.type)] -= it->second.end - it->first;
  if (it->second.type == BlockType::kFree) free_.erase(it->first);
  map_.erase(it);
}

RangeMap::Map::iterator RangeMap::insert_seg(uint64_t start, uint64_t end, BlockType type) {
  counts_[static_cast<size_t>(type)] += end - start;
  if (type == BlockType::kFree) free_[start] = end;
  return map_.emplace(start, Seg{end, type}).first;
}

// Makes `pos` a run boundary (no-op at 0, at the end, or on a boundary).
void RangeMap::split_at(uint64_t pos) {
  if (pos == 0 || pos >= blocks_) return;
  auto it = map_.upper_bound(pos);
  --it;  // run containing pos
  if (it->first == pos) return;
  uint64_t s = it->first, e = it->second.end;
  BlockType t = it->second.type;
  erase_seg(it);
  insert_seg(s, pos, t);
  insert_seg(pos, e, t);
}

void RangeMap::set(uint64_t start, uint64_t end, BlockType type) {
  end = std::min(end, blocks_);
  if (start >= end) return;
  split_at(start);
  split_at(end);
  auto it = map_.find(start);
  while (it != map_.end() && it->first < end) {
    auto next = std::next(it);
    erase_seg(it);
    it = next;
  }
  uint64_t s = start, e = end;
  // Merge with neighbours of the same type.
  auto after = map_.find(end);
  if (after != map_.end() && after->second.type == type) {
    e = after->second.end;
    erase_seg(after);
  }
  auto before = map_.lower_bound(start);
  if (before != map_.begin()) {
    --before;
    if (before->second.end == start && before->second.type == type) {
      s = before->first;
      erase_seg(before);
    }
  }
  insert_seg(s, e, type);
}

BlockType RangeMap::at(uint64_t block) const {
  auto it = map_.upper_bound(block);
  --it;
  return it->second.type;
}

std::vector<Run> RangeMap::runs(uint64_t start, uint64_t end) const {
  std::vector<Run> out;
  end = std::min(end, blocks_);
  if (start >= end) return out;
  auto it = map_.upper_bound(start);
  --it;
  for (; it != map_.end() && it->first < end; ++it)
    out.push_back({std::max(it->first, start), std::min(it->second.end, end), it->second.type});
  return out;
}

std::optional<Run> RangeMap::find_free(uint64_t max_len) {
  if (free_.empty() || max_len == 0) return std::nullopt;
  // The run containing the cursor, else the next one, else wrap to the first.
  uint64_t s;
  auto it = free_.upper_bound(cursor_);
  if (it != free_.begin() && std::prev(it)->second > cursor_) {
    it = std::prev(it);
    s = cursor_;
  } else {
    if (it == free_.end()) it = free_.begin();
    s = it->first;
  }
  uint64_t e = std::min(it->second, s + max_len);
  cursor_ = e;
  return Run{s, e, BlockType::kFree};
}

bool RangeMap::check() const {
  uint64_t pos = 0;
  std::array<uint64_t, kBlockTypes> c{};
  std::map<uint64_t, uint64_t> f;
  const Seg* prev = nullptr;
  for (const auto& [s, seg] : map_) {
    if (s != pos || seg.end <= s) return false;
    if (prev && prev->type == seg.type) return false;
    c[static_cast<size_t>(seg.type)] += seg.end - s;
    if (seg.type == BlockType::kFree) f[s] = seg.end;
    pos = seg.end;
    prev = &seg;
  }
  return pos == blocks_ && c == counts_ && f == free_;
}

}  // namespace udm::bow
