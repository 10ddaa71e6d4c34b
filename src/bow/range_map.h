// The bow range map: the type of every block of the device, as an ordered
// interval map (std::map keyed by run start, adjacent runs of one type always
// merged) plus an index of the FREE runs for allocation. Every operation is
// O(log n + runs touched); nothing scans the whole map (the seed prototype's
// linear searches are one of its listed bugs).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

namespace udm::bow {

enum class BlockType : uint8_t {
  kUnchanged,  // in use at checkpoint time; must be backed up before it is overwritten
  kFree,       // trimmed in state 0 and unused since: backup space, writes need no backup
  kChanged,    // written since the checkpoint; needs nothing
  kBackup,     // holds backed-up data (a log entry's dest); backed up again if written
  kLog,        // block 0: the log
  kSector0,    // where the live contents of block 0 are kept
  kIntent,     // the intent block (the log points at it; see bow_format.h)
};
inline constexpr size_t kBlockTypes = 7;
const char* type_name(BlockType t);

struct Run {
  uint64_t start, end;  // [start, end) in blocks
  BlockType type;
};

class RangeMap {
 public:
  RangeMap(uint64_t blocks, BlockType initial);
  uint64_t blocks() const { return blocks_; }
  // Sets [start, end) to `type` (clipped to the map).
  void set(uint64_t start, uint64_t end, BlockType type);
  BlockType at(uint64_t block) const;
  // The runs covering [start, end), clipped to it, in order.
  std::vector<Run> runs(uint64_t start, uint64_t end) const;
  // Calls fn(Run) for each of them, without allocating.
  template <class F>
  void visit(uint64_t start, uint64_t end, F&& fn) const {
    end = std::min(end, blocks_);
    if (start >= end) return;
    auto it = map_.upper_bound(start);
    --it;
    for (; it != map_.end() && it->first < end; ++it)
      fn(Run{std::max(it->first, start), std::min(it->second.end, end), it->second.type});
  }
  uint64_t count(BlockType t) const { return counts_[static_cast<size_t>(t)]; }
  // Next-fit search of the free index: the first FREE run at or after the
  // cursor (wrapping around), at most `max_len` blocks of it. Does not
  // change the map: the caller sets the run's new type.
  std::optional<Run> find_free(uint64_t max_len);
  // Number of maximal runs (for tests and status).
  size_t run_count() const { return map_.size(); }
  // Consistency check for tests: runs cover [0, blocks), are merged, and the
  // free index and counters agree with them.
  bool check() const;

 private:
  struct Seg {
    uint64_t end;
    BlockType type;
  };
  using Map = std::map<uint64_t, Seg>;
  void split_at(uint64_t pos);
  void erase_seg(Map::iterator it);
  Map::iterator insert_seg(uint64_t start, uint64_t end, BlockType type);
  uint64_t blocks_;
  Map map_;
  std::map<uint64_t, uint64_t> free_;  // start -> end of every FREE run
  std::array<uint64_t, kBlockTypes> counts_{};
  uint64_t cursor_ = 0;
};

}  // namespace udm::bow
