// dm-verity's on-disk format, exactly as veritysetup writes it and the kernel
// reads it (docs/verity.md; ../shared/notes/verity.md §1): the optional
// 512-byte superblock, the tree geometry (levels, hash_start, on-disk order:
// top level first), the salted digests (format 1: H(salt|block), format 0:
// H(block|salt)), the kernel table line, and the pure functions that build
// and check a tree. Everything here is pure or works on BlockDevices, so the
// tools, the target, the tests and the fuzzers share it.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "device/block_device.h"
#include "util/status.h"

namespace udm::verity {

constexpr size_t kSuperblockSize = 512;
constexpr uint32_t kMinBlock = 512, kMaxBlock = 512 * 1024;  // veritysetup's VERITY_BLOCK_SIZE_OK
constexpr size_t kMaxSalt = 256;
constexpr int kMaxLevels = 63;  // the kernel's cap

// Everything that determines the tree (and the table line's middle part).
struct Params {
  uint32_t hash_type = 1;  // 0 = Chrome OS (salt appended, packed digests), 1 = normal
  std::string algorithm = "sha256";
  uint32_t data_block_size = 4096;
  uint32_t hash_block_size = 4096;
  uint64_t data_blocks = 0;
  std::vector<uint8_t> salt;
  uint64_t hash_start = 0;  // first tree block, in hash blocks from the start of the hash device
};

// The tree's shape. Level 0 holds the digests of the data blocks; the top
// level (levels-1) is one block whose digest is the root. On disk the top
// level comes first.
struct Geometry {
  uint32_t digest_size = 0;
  uint32_t hash_per_block_bits = 0;  // hashes per hash block = 1 << bits
  uint32_t entry_size = 0;           // format 1: digest padded to a power of two; format 0: digest_size
  int levels = 0;                    // 0 when data_blocks == 1
  std::vector<uint64_t> level_blocks;  // [level] number of hash blocks
  std::vector<uint64_t> level_start;   // [level] absolute hash-block index of its first block
  uint64_t tree_blocks = 0;            // sum of level_blocks
  uint64_t end_block() const { return hash_start + tree_blocks; }  // first block after the tree
  uint64_t hash_start = 0;
  uint64_t hashes_per_block() const { return uint64_t{1} << hash_per_block_bits; }
};

bool is_block_size_ok(uint64_t bs);
// Checks every field (block sizes, algorithm known to OpenSSL, 2 digests per
// hash block at least, salt size, data_blocks >= 1, level cap, no overflow)
// and computes the geometry.
Result<Geometry> compute_geometry(const Params& p);

// veritysetup's hash_start for a hash offset (bytes, 512-aligned): with a
// superblock the tree starts at the next hash-block boundary after it;
// without, at offset/hbs (an unaligned offset is refused rather than truncated).
Result<uint64_t> hash_start_for_offset(uint64_t hash_offset, uint32_t hash_block_size, bool superblock);

// ---- superblock ----

struct Superblock {
  uint32_t version = 1;
  uint32_t hash_type = 1;
  std::array<uint8_t, 16> uuid{};
  std::string algorithm;
  uint32_t data_block_size = 0;
  uint32_t hash_block_size = 0;
  uint64_t data_blocks = 0;
  std::vector<uint8_t> salt;
  bool operator==(const Superblock&) const = default;
};

std::array<uint8_t, kSuperblockSize> encode_superblock(const Superblock& sb);
// The tree parameters a superblock records (hash_start is the caller's: it
// depends on where the superblock lies).
Params params_of(const Superblock& sb, uint64_t hash_start = 0);
// Validates every field as veritysetup's VERITY_read_sb does, plus that the
// padding is zero and the algorithm string is terminated and known.
Result<Superblock> decode_superblock(std::span<const uint8_t> bytes);

// "12345678-1234-1234-1234-123456789abc" <-> 16 bytes (RFC 4122 string order).
Result<std::array<uint8_t, 16>> parse_uuid(std::string_view s);
std::string format_uuid(const std::array<uint8_t, 16>& u);
std::array<uint8_t, 16> random_uuid();  // version 4

// ---- hex ----
std::string to_hex(std::span<const uint8_t> b);  // lowercase
// Strict: even length, [0-9a-fA-F] only (uppercase is accepted for input,
// as the kernel's hex2bin does; signatures are checked against lowercase).
Result<std::vector<uint8_t>> from_hex(std::string_view s, std::string_view what);

// ---- hashing ----

// One salted digest context (not thread-safe; make one per thread).
class Hasher {
 public:
  static Result<std::unique_ptr<Hasher>> create(const std::string& algorithm, uint32_t hash_type,
                                                std::span<const uint8_t> salt);
  ~Hasher();
  uint32_t digest_size() const { return ds_; }
  // out must hold digest_size() bytes.
  void digest(std::span<const uint8_t> block, uint8_t* out);

 private:
  Hasher() = default;
  const EVP_MD* md_ = nullptr;
  EVP_MD_CTX* base_ = nullptr;  // salt already fed (format 1)
  EVP_MD_CTX* ctx_ = nullptr;
  uint32_t hash_type_ = 1;
  std::vector<uint8_t> salt_;
  uint32_t ds_ = 0;
};

// ---- building and checking a tree ----

struct Tree {
  std::vector<uint8_t> root;
  // Every tree block in on-disk order (top level first), tree_blocks * hbs bytes.
  std::vector<uint8_t> blocks;
};

// Reads the data blocks [0, data_blocks) of `data` (sequentially, large
// reads, leaf hashing on `threads` threads) and builds the tree in memory.
// progress(done_bytes) is called from the calling thread now and then.
Result<Tree> build_tree(const Params& p, BlockDevice& data, unsigned threads = 1,
                        const std::function<void(uint64_t)>& progress = {});

// The tree over data already in memory (tests, fuzzers).
Result<Tree> build_tree_mem(const Params& p, std::span<const uint8_t> data, unsigned threads = 1);

// veritysetup verify: rebuilds level by level from the leaves, compares each
// stored digest and checks that every spare byte (v1 entry padding, block
// tails) is zero, then checks the root. Outcome codes follow veritysetup.
struct VerifyResult {
  enum Code { kOk = 0, kRootMismatch = 1, kCorrupt = 2 } code = kOk;
  std::string message;  // veritysetup's words, e.g. "Verification failed at position 4096."
};
Result<VerifyResult> verify_tree(const Params& p, BlockDevice& data, BlockDevice& hash,
                                 std::span<const uint8_t> root, unsigned threads = 1);

// ---- the kernel table line ----

enum class ErrorMode { kEio, kIgnore, kRestart, kPanic };

struct VerityLine {
  Params params;
  std::string data_dev, hash_dev;
  std::vector<uint8_t> root;
  std::string root_hex;  // as given (the kernel signs argv's string)
  ErrorMode corruption = ErrorMode::kEio;
  bool restart_on_error = false, panic_on_error = false;
  bool ignore_zero_blocks = false, check_at_most_once = false, try_verify_in_tasklet = false;
  std::string sig_key_desc;   // root_hash_sig_key_desc
  std::string sig_file;       // udm-only: root_hash_sig <path.p7s>
};

// Parses the target arguments (after "<start> <len> verity"). Every field is
// checked; FEC options are refused with "not supported". `target` names the
// target in errors.
Result<VerityLine> parse_table_args(const std::vector<std::string>& args);
// The arguments in cryptsetup's order (lowercase hex, options in
// get_dm_verity_params order).
std::string format_table_args(const VerityLine& t);

}  // namespace udm::verity
