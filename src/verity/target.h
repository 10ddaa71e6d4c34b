// The `verity` target: dm-verity's table line unchanged, every read checked
// against the hash tree up to the root (docs/verity.md).
//
//   <start> <len> verity <0|1> <data_dev> <hash_dev> <data_block_size> <hash_block_size>
//                 <num_data_blocks> <hash_start_block> <algorithm> <root_hex> <salt_hex|->
//                 [<#opt_args> <opt>...]
//
// Locking: verified hash blocks live in io/block_cache.h (its shard locks are
// leaves; a load runs unlocked and may load the parent block, recursively);
// the digest contexts come from a small pool under `pool_mu_` (a leaf); large
// reads hash their data blocks on verity/hash_pool.h's workers (no lock of
// this target is held while waiting for them); the
// counters, the corruption flag, the latch and the check_at_most_once bitmap
// are atomics. No lock is held across I/O.
#pragma once

#include <atomic>
#include <mutex>

#include "device/target_kit.h"
#include "io/block_cache.h"
#include "verity/format.h"

namespace udm::verity {

class VerityTarget : public ReadOnlyTarget {
 public:
  // sig: "none" or "verified" (checked by the factory before this is built).
  static Result<std::shared_ptr<VerityTarget>> create(VerityLine t, DevicePtr data, DevicePtr hash,
                                                      uint64_t length, std::string name, std::string sig);
  ~VerityTarget() override;

  std::string type() const override { return "verity"; }
  uint64_t size() const override { return length_; }
  DeviceCaps caps() const override;
  // Kernel's "V|C <fec|->", then "verified=N corrupt=N cache=HITS/MISSES sig=none|verified" and
  // "latched" once a restart/panic option latched the device.
  std::string status() const override;
  // "reset-counters" (verified, corrupt, cache counters; not the C flag) or
  // "drop-cache" (forget every verified hash block).
  Result<std::string> message(const std::vector<std::string>& args) override;

  bool corrupted() const { return hash_failed_; }
  bool latched() const { return latched_; }
  uint64_t corrupt_events() const { return corrupt_; }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override;
  // Never the data device's map: its holes are not verified, and a block that
  // fails verification must not be described as zeroes. With
  // ignore_zero_blocks, a block whose digest in the (verified) hash tree is
  // the zero block's reads as zeroes without its data being read: zero. Every
  // other block: data.
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override;

 private:
  VerityTarget() = default;
  struct HasherLease;
  std::unique_ptr<Hasher> take_hasher();
  void give_hasher(std::unique_ptr<Hasher> h);
  // The verified block `index` of `level` (walking up to the root on a miss).
  Result<BlockCache::Block> hash_block(int level, uint64_t index);
  // Handles a corruption (type "data" or "metadata"); returns the error to
  // fail the read with, or OK to let it through (ignore_corruption).
  Status corruption(const char* type, uint64_t block);
  Status io_error(Status st);
  Status verify_blocks(uint64_t first, uint64_t n, uint8_t* data);

  VerityLine t_;
  Geometry g_;
  DevicePtr data_, hash_;
  uint64_t length_ = 0;
  std::string name_, sig_;
  std::shared_ptr<BlockCache> cache_;
  uint64_t owner_ = 0;
  std::vector<uint8_t> zero_digest_;
  std::unique_ptr<std::atomic<uint64_t>[]> once_;  // check_at_most_once bitmap

  std::mutex pool_mu_;
  std::vector<std::unique_ptr<Hasher>> pool_;

  std::atomic<bool> hash_failed_{false}, latched_{false};
  std::atomic<uint64_t> verified_{0}, corrupt_{0}, lookups_{0}, loads_{0}, logged_{0};
};

Result<TargetPtr> make_verity(const TargetParams& p);

}  // namespace udm::verity
