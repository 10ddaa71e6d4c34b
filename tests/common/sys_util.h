// Helpers for tests that drive real tools (qemu-io, nbdcopy, mkfs.ext4,
// losetup, mount, e2fsck) and the udm daemon as a separate process.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace udm::test {

struct CmdResult {
  int exit_code = -1;  // -1 if killed by a signal
  std::string out, err;
  bool ok() const { return exit_code == 0; }
  std::string describe() const;  // "exit N; stdout: ...; stderr: ..." for assertion messages
  // The last word of the first stdout line starting with `name` ("Root
  // hash:", "Salt:" of veritysetup's report); empty if there is none.
  std::string field(const std::string& name) const;
};

// Run argv (no shell); captures stdout and stderr. stdin is /dev/null unless given.
CmdResult run(const std::vector<std::string>& argv, const std::string& stdin_data = "");
// Run through /bin/sh -c.
CmdResult sh(const std::string& script);
bool have_tool(const std::string& name);  // on PATH
// Polls until `path` exists (a FUSE export's device file appears shortly
// after create); false after `seconds`.
bool wait_for_file(const std::string& path, double seconds = 5);
bool is_root();

// A temporary directory, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Write/read/compare whole files.
void write_file(const std::string& path, const std::vector<uint8_t>& data);
std::vector<uint8_t> read_file(const std::string& path);
void make_sparse_file(const std::string& path, uint64_t size);
std::vector<uint8_t> random_bytes(size_t n, uint64_t seed);
std::string sha256_file(const std::string& path);  // lowercase hex

// losetup a file; detaches on destruction. Empty device() if it failed (see error()).
class LoopDevice {
 public:
  explicit LoopDevice(const std::string& file, bool read_only = false, int sector_size = 0);
  ~LoopDevice();
  const std::string& device() const { return dev_; }
  const std::string& error() const { return err_; }

 private:
  std::string dev_, err_;
};

// mount DEV DIR [-o opts]; unmounts (lazily if busy) on destruction.
class Mount {
 public:
  Mount(const std::string& dev, const std::string& dir, const std::string& opts = "");
  ~Mount();
  bool ok() const { return ok_; }
  const std::string& error() const { return err_; }
  bool unmount();  // explicit umount; returns success

 private:
  std::string dir_, err_;
  bool ok_ = false;
};

// A `udm daemon` child process on private sockets in a temp dir.
//   socket   : control socket
//   nbd_unix : NBD Unix socket (export name = device name)
//   fuse_dir : FUSE directory (DIR/NAME per device), if started with fuse
class TestDaemon {
 public:
  static std::unique_ptr<TestDaemon> start(bool fuse = true, bool nbd = true,
                                           const std::vector<std::string>& extra_args = {});
  ~TestDaemon();  // SIGTERM, waits; stop() to check the exit status
  // Sends SIGTERM and waits; returns the exit status (0 expected).
  int stop();
  // Runs `udm <args...> --socket <socket>`.
  CmdResult udm(std::vector<std::string> args) const;
  std::string fuse_path(const std::string& name) const { return fuse_dir + "/" + name; }
  std::string nbd_uri(const std::string& name) const;  // nbd+unix:///NAME?socket=PATH
  // qemu-style: "nbd:unix:PATH:exportname=NAME"
  std::string qemu_nbd_spec(const std::string& name) const;
  std::string dir, socket, nbd_unix, fuse_dir, log_path;
  int pid = -1;

 private:
  TempDir tmp_;
};

// Path of the udm binary (env UDM_BIN, set by ctest) and of ../shared.
std::string udm_bin();
std::string shared_dir();
std::string source_dir();

}  // namespace udm::test
