// A mapped device: a named table of segments, each served by a target, with
// dm's active/inactive table pair and suspend/resume. It is itself a
// BlockDevice, so exports serve it and other tables stack on it.
//
// Suspend blocks new I/O, waits until in-flight I/O has drained, flushes the
// targets, then calls postsuspend. Resume swaps in a loaded (inactive) table,
// if any, and releases waiting I/O. The active table is only replaced while
// suspended with nothing in flight, so the I/O path reads it without a lock.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "device/block_device.h"
#include "device/table.h"
#include "device/target.h"

namespace udm {

struct Segment {
  uint64_t start = 0;   // bytes
  uint64_t length = 0;  // bytes
  std::string type;
  std::string args;  // as given in the table line
  TargetPtr target;
};

// A fully constructed table: every target built, not yet active.
class Table {
 public:
  // Build every target of the spec; fails (naming the line) if one fails.
  static Result<std::shared_ptr<Table>> build(const TableSpec& spec, DeviceResolver& resolver,
                                              const TargetRegistry& registry,
                                              const std::string& device_name);
  uint64_t size() const { return size_; }
  const std::vector<Segment>& segments() const { return segments_; }
  DeviceCaps caps() const { return caps_; }
  // Index of the segment containing byte offset (offset < size()).
  size_t find(uint64_t offset) const;
  std::string text() const;  // table lines, sectors

 private:
  std::vector<Segment> segments_;
  uint64_t size_ = 0;
  DeviceCaps caps_;
};

class MappedDevice : public BlockDevice {
 public:
  MappedDevice(std::string name, std::shared_ptr<Table> table, bool read_only = false);
  ~MappedDevice() override;

  const std::string& name() const { return name_; }
  uint64_t size() const override;
  DeviceCaps caps() const override;
  Status do_read(uint64_t offset, std::span<uint8_t> buf) override;
  Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) override;
  Status do_trim(uint64_t offset, uint64_t length) override;
  Status do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap) override;
  Status do_flush() override;
  Status do_allocation(uint64_t offset, uint64_t length, AllocMap& out) override;
  // Each segment's piece to its target (a stacked format reader's metadata
  // reaches the remote source under it). The pins belong to the sources of
  // the table active now: a reload that opens them again does not repeat them.
  void do_keep_cached(uint64_t offset, uint64_t length) override;
  // The segment holding `offset` answers for the part of the range inside
  // it; `use` runs inside the I/O gate, so suspend waits for it and a reload
  // cannot replace the table (and close the file) under it, as for read().
  Result<bool> do_direct_extent(uint64_t offset, uint64_t length, const DirectExtentUse& use) override;

  // Control.
  void load(std::shared_ptr<Table> inactive);  // replaces any earlier inactive table
  void clear_inactive();
  bool has_inactive() const;
  Status suspend();
  Status resume();
  bool suspended() const;
  std::shared_ptr<Table> active_table() const;
  std::shared_ptr<Table> inactive_table() const;
  // "<start> <length> <type> <status>" per segment, sectors.
  std::vector<std::string> status_lines() const;
  std::vector<std::string> table_lines() const;
  Result<std::string> message(uint64_t sector, const std::vector<std::string>& args);
  // Stop everything before removal: suspend (drains and flushes).
  Status shutdown();

  // Opens by exports and stacked tables.
  int open_count() const { return open_count_.load(); }
  void add_opener() { open_count_++; }
  void drop_opener() { open_count_--; }
  void set_read_only(bool ro) { read_only_ = ro; }
  bool read_only() const { return read_only_; }
  uint64_t event_nr() const { return event_nr_.load(); }

 private:
  // Enter/leave the I/O gate; enter blocks while suspended.
  void enter();
  void leave();
  template <class F>
  Status for_each_piece(uint64_t offset, uint64_t length, F&& f);

  std::string name_;
  std::shared_ptr<Table> active_;  // replaced only while suspended and drained
  std::shared_ptr<Table> inactive_;
  std::atomic<bool> read_only_;
  std::atomic<uint64_t> size_{0};  // of the active table, readable without locks
  std::atomic<int> open_count_{0};
  std::atomic<uint64_t> event_nr_{0};

  mutable std::mutex mu_;  // guards inactive_, suspended_, control ops
  std::mutex control_mu_;  // serializes suspend/resume
  std::condition_variable cv_;
  std::atomic<bool> suspended_{false};
  std::atomic<int64_t> in_flight_{0};
};

using MappedDevicePtr = std::shared_ptr<MappedDevice>;

}  // namespace udm
