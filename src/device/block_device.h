// The one interface everything in udm meets at: a thread-safe block device.
//
// Backing files, the memory and fault-injecting devices, every target and a
// whole mapped device (a table of targets) implement it, so targets stack:
// a target only ever sees other BlockDevices. All calls may come from many
// threads at once; an implementation must be safe for concurrent calls on
// different (and, with last-writer-wins semantics, overlapping) ranges.
//
// Offsets and lengths are bytes. The public calls check the range once (the
// requests come from the network) and dispatch to the protected do_* hooks. Errors are Status values with errno codes, never exceptions.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "util/status.h"

namespace udm {

struct DeviceCaps {
  bool read_only = false;
  bool can_trim = false;          // trim() does something useful (else it is a no-op/error)
  bool trim_zeroes = false;       // after trim() the range reads as zeroes
  bool can_write_zeroes = true;   // write_zeroes() is supported (maybe emulated)
  bool fast_zero = false;         // write_zeroes() is cheaper than writing zeroes
  bool can_flush = true;
  uint32_t logical_block = 512;   // minimum I/O granularity (bytes, power of two)
  uint32_t physical_block = 4096; // preferred granularity
  uint32_t max_io = 32u << 20;    // largest single request the device accepts
};

// What a range of a device holds (allocation()): NBD's base:allocation.
enum class AllocKind : uint8_t {
  kData,  // allocated; may hold anything (the safe answer for every range)
  kZero,  // allocated and reads as zeroes
  kHole,  // not allocated (a write may need space) and reads as zeroes
};

struct AllocRun {
  uint64_t length = 0;
  AllocKind kind = AllocKind::kData;
  // Layered devices (lsmt): which layer holds the bytes, 1 = the top one,
  // 2 = the one below, ...; 0 = not known or not layered. Holes keep 0.
  uint32_t depth = 0;
};
using AllocMap = std::vector<AllocRun>;

// Where state about a read-only source's bytes may be kept on this machine
// (BlockDevice::local_state_home): a file in a directory this process owns,
// and the bytes' identity, which changes whenever the bytes may have.
struct LocalStateHome {
  std::string path;
  std::string key;
};

// Bytes of a device that are, unchanged, bytes of an open file descriptor
// (BlockDevice::direct_extent): the device's [offset, offset + length) is
// the file's [file_offset, file_offset + length).
struct DirectExtent {
  int fd = -1;
  uint64_t file_offset = 0;
  uint64_t length = 0;
};
using DirectExtentUse = std::function<Status(const DirectExtent&)>;

// Appends a run, merging it into the last one when they are alike.
void add_alloc_run(AllocMap& m, uint64_t length, AllocKind kind, uint32_t depth = 0);
constexpr size_t kMaxAllocRuns = 4096;  // implementations may stop describing after this many

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  virtual uint64_t size() const = 0;
  virtual DeviceCaps caps() const { return {}; }

  // The I/O entry points check the range (EINVAL outside [0, size())) and
  // call the do_* hooks below, which implementations override.
  Status read(uint64_t offset, std::span<uint8_t> buf);
  // fua: the data is durable when this returns OK (as if flush() followed).
  Status write(uint64_t offset, std::span<const uint8_t> buf, bool fua = false);
  // Discard (advisory): the range's contents become unspecified, or read as
  // zeroes if caps().trim_zeroes. Default hook: EOPNOTSUPP.
  Status trim(uint64_t offset, uint64_t length);
  // Zero-out: when this returns OK every byte of the range reads as zero.
  // may_unmap: the device may deallocate the range to do it (NBD WRITE_ZEROES
  // without NO_HOLE, loop's punch-hole); without it the range stays allocated
  // (NO_HOLE, FALLOC_FL_ZERO_RANGE). Default hook: trims when may_unmap and
  // caps() says trim zeroes, else writes zero buffers.
  Status write_zeroes(uint64_t offset, uint64_t length, bool fua = false, bool may_unmap = false);
  // Make every write that completed before this call durable.
  Status flush() { return do_flush(); }
  // Describes [offset, offset+length) as consecutive runs from `offset`
  // (replacing `out`). It may describe only a prefix (at least one byte, as
  // NBD block status may): callers ask again from where it stopped. A run
  // said to be zero or hole reads as zeroes; "data" promises nothing, so it
  // is always a correct answer (and the default hook's). The answer is the
  // state at some moment during the call: a range written concurrently may
  // be described either way. length 0: no runs.
  Status allocation(uint64_t offset, uint64_t length, AllocMap& out);

  // A format reader's hint: [offset, offset+length) is metadata it reads at
  // every open (a ZFile's header, trailer and jump table, an LSMT index). A
  // device that caches with eviction (remote sources) keeps those bytes out
  // of eviction while it lives; a device whose bytes come from another one
  // (linear, a mapped device, a ZFile's decompressed space, a tar member)
  // passes the hint on as the range of that device holding them; others
  // ignore it. Advisory: no error; the range is clipped to the device.
  void keep_cached(uint64_t offset, uint64_t length);

  // A read-only source that cannot hold state itself (a remote object) may
  // name a local file for state about its bytes, keyed by their identity:
  // io/region_overlay.h keeps the writable regions of such a source there
  // (the update copy-back's checkpoint over a remote diff). Default and
  // when the source has no such place: an error saying why.
  virtual Result<LocalStateHome> local_state_home() const;

  // Zero-copy reads (the FUSE and NBD exports splice the bytes from the file).
  // When a prefix (at least one byte) of [offset, offset+length) is, with
  // no transformation, a range of an open file descriptor, calls `use` once
  // with that extent and returns true (or use's error). `use` runs while
  // the bytes are served exactly as read() would serve them: the fd stays
  // open and a mapped device holds its I/O gate (suspend and reload wait for
  // it, as for a read), so `use` must not block on anything but the file and
  // the export's own output. Otherwise returns false without calling `use`
  // and the caller reads normally. Default hook: false; only devices whose
  // reads are a plain offset shift of a file answer (FileDevice without
  // O_DIRECT; linear, a mapped device, a counted open and a read-only view
  // passing the question down); every transforming or caching target keeps
  // the default. length 0 or an error in range: as read() (EINVAL).
  Result<bool> direct_extent(uint64_t offset, uint64_t length, const DirectExtentUse& use);

  // Convenience wrappers.
  Status read_exact(uint64_t offset, void* buf, size_t len) {
    return read(offset, std::span<uint8_t>(static_cast<uint8_t*>(buf), len));
  }
  Status write_exact(uint64_t offset, const void* buf, size_t len, bool fua = false) {
    return write(offset, std::span<const uint8_t>(static_cast<const uint8_t*>(buf), len), fua);
  }

 protected:
  // Hooks. The range is already checked to lie inside the device.
  virtual Status do_read(uint64_t offset, std::span<uint8_t> buf) = 0;
  virtual Status do_write(uint64_t offset, std::span<const uint8_t> buf, bool fua) = 0;
  virtual Status do_trim(uint64_t offset, uint64_t length);
  virtual Status do_write_zeroes(uint64_t offset, uint64_t length, bool fua, bool may_unmap);
  virtual Status do_flush() = 0;
  // Appends runs describing [offset, offset+length) (or a prefix of it) to
  // `out` (empty on entry). Default: one data run. The public call merges
  // alike neighbours, clips to the range and treats an empty answer as data.
  virtual Status do_allocation(uint64_t offset, uint64_t length, AllocMap& out);
  // keep_cached's hook: the range is inside the device and not empty.
  // Default: nothing (a device without a cache of its own and no lower one).
  virtual void do_keep_cached(uint64_t offset, uint64_t length) { (void)offset, (void)length; }
  // direct_extent's hook: the range is inside the device and not empty.
  virtual Result<bool> do_direct_extent(uint64_t offset, uint64_t length, const DirectExtentUse& use) {
    (void)offset, (void)length, (void)use;
    return false;
  }

  // Zero-out by writing zero buffers through do_write (the fallback every
  // do_write_zeroes may use; never re-enters the public entry points).
  Status write_zero_buffers(uint64_t offset, uint64_t length, bool fua);

  // EINVAL unless [offset, offset+len) lies inside the device.
  Status check_range(uint64_t offset, uint64_t len, const char* op) const;
};

using DevicePtr = std::shared_ptr<BlockDevice>;

}  // namespace udm
