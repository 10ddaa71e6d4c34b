// The block-device contract suite's fixtures: every target type, built the
// way the daemon builds it (a table through Table::build into a MappedDevice),
// over memory or file backing devices. docs/architecture.md states the
// contract; contract_test.cpp checks it for each case listed here.
//
// Adding a target: add one entry to contract_cases() below.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/sys_util.h"
#include "device/mapped_device.h"
#include "device/target.h"

namespace udm::contract {

// What a device under test promises about its bytes.
enum class Kind {
  kReadWrite,    // reads return what the last write/zero put there
  kDropsWrites,  // `zero`: writes succeed and vanish, reads are zero
  kErrors,       // `error`: every I/O fails with EIO
  kReadOnly,     // reads equal a known image, writes are refused
};

// A resolver over named devices: specs of backing devices (files: their
// path; memory: a unique name) and udm device names (stacking).
class TestResolver : public DeviceResolver {
 public:
  std::map<std::string, DevicePtr> devs;
  Result<DevicePtr> open(const std::string& spec, bool writable) override;
};

// One fixture's world: backing devices, stacked devices, a temp directory.
class Env {
 public:
  explicit Env(bool files);
  // Fault mode: backing devices are FaultDevices (volatile write cache).
  static std::unique_ptr<Env> faulty();
  // After cut_power(): the same names over what the disks held durably.
  std::unique_ptr<Env> reboot() const;
  void cut_power();
  ~Env();  // destroys devices top-down, then the backing

  bool files() const { return files_; }
  // A backing device holding `init` (memory, or a temp file); returns its spec.
  std::string backing(const std::string& name, const std::vector<uint8_t>& init);
  // Registers an existing device under a unique spec (e.g. a wrapper).
  std::string add(const std::string& name, DevicePtr dev);
  // A path in the temp directory (for targets that only take files).
  std::string path(const std::string& name) const { return tmp_.file(uniq_ + name); }
  // Builds a table into a new mapped device, usable by later tables as `name`.
  Result<MappedDevicePtr> make(const std::string& name, const std::string& table);
  // Destroys a device made by make() (and its targets).
  void drop(const std::string& name);
  TestResolver& resolver() { return res_; }
  const std::string& uniq() const { return uniq_; }

 private:
  bool files_;
  bool fault_ = false;
  std::map<std::string, DevicePtr> faults_;            // fault mode: name -> FaultDevice
  std::map<std::string, std::vector<uint8_t>> images_;  // rebooted: name -> durable bytes
  udm::test::TempDir tmp_;
  std::string uniq_;
  TestResolver res_;
  std::vector<std::pair<std::string, MappedDevicePtr>> devs_;  // creation order
};

struct Built {
  MappedDevicePtr dev;
  Kind kind = Kind::kReadWrite;
  std::vector<uint8_t> expect;  // kReadOnly: the image the device must read as
  // Extra invariant checked after the workload (e.g. a snapshot's view did
  // not change while its origin was written). Empty string: holds.
  std::function<std::string()> check;
  std::string note;  // e.g. "merge still running at start"
  // Writes may fail with ENOSPC (bow in state 1 when its backups fill the
  // free space); such a write must change nothing.
  bool may_run_out = false;
  // Byte ranges the device must describe as zero or hole when it is built
  // (its allocation map knows them: zeroed or unmapped in the fixture), and
  // those it must only over file backing devices (which are written sparse:
  // all-zero 4 KiB blocks left as holes).
  std::vector<std::pair<uint64_t, uint64_t>> sparse, sparse_over_files;
};

struct Case {
  std::string name;
  std::function<Result<Built>(Env&)> make;
  bool file_only = false;  // the target takes file paths only (lsmt's RW layer)
};

// Every target type in every configuration the contract covers.
const std::vector<Case>& contract_cases();

// Targets whose state lives on their backing devices, for the durability
// check: boot(env, true) creates the device on fresh disks, boot(env, false)
// rebuilds it after a power cut; check() tells whether side views survived.
struct DurableCase {
  std::string name;
  std::function<Result<MappedDevicePtr>(Env&, bool first_boot)> boot;
  std::function<std::string(Env&)> check;  // may be empty
};
const std::vector<DurableCase>& durable_cases();

constexpr uint64_t kDevSize = 1 << 20;  // every device under test is 1 MiB

}  // namespace udm::contract
