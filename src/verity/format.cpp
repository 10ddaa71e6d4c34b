#include "verity/format.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "device/target_args.h"
#include "util/endian.h"

namespace udm::verity {

namespace {

constexpr char kSignature[8] = {'v', 'e', 'r', 'i', 't', 'y', 0, 0};

bool all_zero(std::span<const uint8_t> b) {
  return std::all_of(b.begin(), b.end(), [](uint8_t c) { return c == 0; });
}

// Digest size of an OpenSSL digest name, or 0 if unknown / variable length.
uint32_t digest_size_of(const std::string& alg) {
  const EVP_MD* md = EVP_get_digestbyname(alg.c_str());
  if (!md) return 0;
  int n = EVP_MD_get_size(md);
  return n > 0 ? static_cast<uint32_t>(n) : 0;
}

uint32_t floor_log2(uint64_t v) { return 63 - __builtin_clzll(v); }

}  // namespace

bool is_block_size_ok(uint64_t bs) { return bs >= kMinBlock && bs <= kMaxBlock && (bs & (bs - 1)) == 0; }

Result<Geometry> compute_geometry(const Params& p) {
  if (p.hash_type > 1) return Invalid(fmt::format("unsupported hash type {} (0 or 1)", p.hash_type));
  if (!is_block_size_ok(p.data_block_size))
    return Invalid(fmt::format("unsupported data block size {} (a power of two, 512 to 512 KiB)",
                               p.data_block_size));
  if (!is_block_size_ok(p.hash_block_size))
    return Invalid(fmt::format("unsupported hash block size {} (a power of two, 512 to 512 KiB)",
                               p.hash_block_size));
  if (p.algorithm.empty() || p.algorithm.size() >= 32)
    return Invalid(fmt::format("hash algorithm name '{}' must be 1 to 31 characters", p.algorithm));
  uint32_t ds = digest_size_of(p.algorithm);
  if (ds == 0) return Invalid(fmt::format("hash algorithm '{}' is not known to OpenSSL", p.algorithm));
  if (p.hash_block_size / ds < 2)
    return Invalid(fmt::format("hash block size {} holds fewer than 2 {} digests", p.hash_block_size, p.algorithm));
  if (p.salt.size() > kMaxSalt) return Invalid(fmt::format("salt of {} bytes is too long (at most {})", p.salt.size(), kMaxSalt));
  if (p.data_blocks == 0) return Invalid("no data blocks to cover");
  if (p.data_blocks > (UINT64_MAX >> 20)) return Invalid(fmt::format("{} data blocks is too many", p.data_blocks));
  Geometry g;
  g.digest_size = ds;
  g.hash_per_block_bits = floor_log2(p.hash_block_size / ds);
  g.entry_size = p.hash_type == 1 ? (p.hash_block_size >> g.hash_per_block_bits) : ds;
  const uint32_t bits = g.hash_per_block_bits;
  int levels = 0;
  while (static_cast<uint64_t>(bits) * levels < 64 && ((p.data_blocks - 1) >> (bits * levels)) != 0) levels++;
  if (levels > kMaxLevels) return Invalid("too many tree levels");
  g.levels = levels;
  g.level_blocks.resize(levels);
  g.level_start.resize(levels);
  for (int i = 0; i < levels; i++) {
    uint64_t shift = static_cast<uint64_t>(bits) * (i + 1);
    g.level_blocks[i] = shift >= 64 ? 1 : ((p.data_blocks - 1) >> shift) + 1;
  }
  g.hash_start = p.hash_start;
  uint64_t pos = p.hash_start;
  for (int i = levels - 1; i >= 0; i--) {
    g.level_start[i] = pos;
    if (pos + g.level_blocks[i] < pos) return Invalid("hash start block overflows");
    pos += g.level_blocks[i];
  }
  g.tree_blocks = pos - p.hash_start;
  if (pos > (UINT64_MAX / p.hash_block_size)) return Invalid("hash area end overflows");
  return g;
}

Result<uint64_t> hash_start_for_offset(uint64_t off, uint32_t hbs, bool superblock) {
  if (off % 512) return Invalid(fmt::format("hash offset {} is not a multiple of 512", off));
  if (!is_block_size_ok(hbs)) return Invalid(fmt::format("unsupported hash block size {}", hbs));
  if (!superblock) {
    if (off % hbs)
      return Invalid(fmt::format("hash offset {} is not a multiple of the hash block size {} (without a "
                                 "superblock the tree starts at the offset)",
                                 off, hbs));
    return off / hbs;
  }
  if (off > UINT64_MAX - hbs - kSuperblockSize) return Invalid("hash offset overflows");
  return (off + kSuperblockSize + hbs - 1) / hbs;
}

// ---- superblock ----

std::array<uint8_t, kSuperblockSize> encode_superblock(const Superblock& sb) {
  std::array<uint8_t, kSuperblockSize> b{};
  memcpy(b.data(), kSignature, 8);
  put_le32(b.data() + 8, sb.version);
  put_le32(b.data() + 12, sb.hash_type);
  memcpy(b.data() + 16, sb.uuid.data(), 16);
  std::string alg = sb.algorithm;
  for (auto& c : alg) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  memcpy(b.data() + 32, alg.data(), std::min<size_t>(alg.size(), 31));
  put_le32(b.data() + 64, sb.data_block_size);
  put_le32(b.data() + 68, sb.hash_block_size);
  put_le64(b.data() + 72, sb.data_blocks);
  put_le16(b.data() + 80, static_cast<uint16_t>(sb.salt.size()));
  if (!sb.salt.empty()) memcpy(b.data() + 88, sb.salt.data(), std::min(sb.salt.size(), kMaxSalt));  // no salt: data() may be null
  return b;
}

Result<Superblock> decode_superblock(std::span<const uint8_t> b) {
  if (b.size() < kSuperblockSize)
    return Invalid(fmt::format("superblock: {} bytes, need {}", b.size(), kSuperblockSize));
  if (memcmp(b.data(), kSignature, 8) != 0) return Invalid("superblock: no verity signature (not a VERITY device)");
  Superblock sb;
  sb.version = le32(b.data() + 8);
  if (sb.version != 1) return Invalid(fmt::format("superblock: unsupported version {}", sb.version));
  sb.hash_type = le32(b.data() + 12);
  if (sb.hash_type > 1) return Invalid(fmt::format("superblock: unsupported hash type {}", sb.hash_type));
  memcpy(sb.uuid.data(), b.data() + 16, 16);
  const char* alg = reinterpret_cast<const char*>(b.data() + 32);
  size_t alen = strnlen(alg, 32);
  if (alen == 32) return Invalid("superblock: algorithm name is not terminated");
  if (alen == 0) return Invalid("superblock: empty algorithm name");
  if (!all_zero(b.subspan(32 + alen, 32 - alen)))
    return Invalid("superblock: bytes after the algorithm name are not zero");
  sb.algorithm.assign(alg, alen);
  for (char c : sb.algorithm)
    if (!isprint(static_cast<unsigned char>(c)) || isupper(static_cast<unsigned char>(c)))
      return Invalid("superblock: algorithm name is not lowercase printable text");
  if (digest_size_of(sb.algorithm) == 0)
    return Invalid(fmt::format("superblock: hash algorithm '{}' is not supported", sb.algorithm));
  sb.data_block_size = le32(b.data() + 64);
  sb.hash_block_size = le32(b.data() + 68);
  if (!is_block_size_ok(sb.data_block_size) || !is_block_size_ok(sb.hash_block_size))
    return Invalid(fmt::format("superblock: unsupported block sizes {}/{}", sb.data_block_size, sb.hash_block_size));
  sb.data_blocks = le64(b.data() + 72);
  if (sb.data_blocks == 0) return Invalid("superblock: zero data blocks");
  uint16_t salt_size = le16(b.data() + 80);
  if (salt_size > kMaxSalt) return Invalid(fmt::format("superblock: salt size {} is over {}", salt_size, kMaxSalt));
  if (!all_zero(b.subspan(82, 6))) return Invalid("superblock: padding at 82 is not zero");
  sb.salt.assign(b.data() + 88, b.data() + 88 + salt_size);
  if (!all_zero(b.subspan(88 + salt_size, kMaxSalt - salt_size)))
    return Invalid("superblock: bytes after the salt are not zero");
  if (!all_zero(b.subspan(344, 168))) return Invalid("superblock: padding at 344 is not zero");
  auto g = compute_geometry(params_of(sb));
  if (!g.ok()) return g.status().context("superblock");
  return sb;
}

Params params_of(const Superblock& sb, uint64_t hash_start) {
  Params p;
  p.hash_type = sb.hash_type;
  p.algorithm = sb.algorithm;
  p.data_block_size = sb.data_block_size;
  p.hash_block_size = sb.hash_block_size;
  p.data_blocks = sb.data_blocks;
  p.salt = sb.salt;
  p.hash_start = hash_start;
  return p;
}

Result<std::array<uint8_t, 16>> parse_uuid(std::string_view s) {
  std::array<uint8_t, 16> u{};
  if (s.size() != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
    return Invalid(fmt::format("'{}' is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", s));
  std::string hex;
  for (size_t i = 0; i < s.size(); i++)
    if (i != 8 && i != 13 && i != 18 && i != 23) hex += s[i];
  UDM_ASSIGN_OR_RETURN(auto b, from_hex(hex, "UUID"));
  std::copy(b.begin(), b.end(), u.begin());
  return u;
}

std::string format_uuid(const std::array<uint8_t, 16>& u) {
  std::string h = to_hex(u);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
}

std::array<uint8_t, 16> random_uuid() {
  std::array<uint8_t, 16> u{};
  if (RAND_bytes(u.data(), 16) != 1) abort();
  u[6] = (u[6] & 0x0f) | 0x40;
  u[8] = (u[8] & 0x3f) | 0x80;
  return u;
}

std::string to_hex(std::span<const uint8_t> b) {
  static const char* d = "0123456789abcdef";
  std::string s(b.size() * 2, '0');
  for (size_t i = 0; i < b.size(); i++) {
    s[2 * i] = d[b[i] >> 4];
    s[2 * i + 1] = d[b[i] & 15];
  }
  return s;
}

Result<std::vector<uint8_t>> from_hex(std::string_view s, std::string_view what) {
  if (s.size() % 2) return Invalid(fmt::format("{}: odd number of hex digits ({})", what, s.size()));
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::vector<uint8_t> out(s.size() / 2);
  for (size_t i = 0; i < out.size(); i++) {
    int hi = nib(s[2 * i]), lo = nib(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return Invalid(fmt::format("{}: '{}' is not hex", what, s));
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

// ---- hashing ----

Result<std::unique_ptr<Hasher>> Hasher::create(const std::string& algorithm, uint32_t hash_type,
                                                std::span<const uint8_t> salt) {
  std::unique_ptr<Hasher> h(new Hasher());
  h->md_ = EVP_get_digestbyname(algorithm.c_str());
  if (!h->md_ || EVP_MD_get_size(h->md_) <= 0)
    return Invalid(fmt::format("hash algorithm '{}' is not known to OpenSSL", algorithm));
  h->ds_ = EVP_MD_get_size(h->md_);
  h->hash_type_ = hash_type;
  h->salt_.assign(salt.begin(), salt.end());
  h->base_ = EVP_MD_CTX_new();
  h->ctx_ = EVP_MD_CTX_new();
  if (!h->base_ || !h->ctx_ || EVP_DigestInit_ex(h->base_, h->md_, nullptr) != 1)
    return IoError("OpenSSL digest init failed");
  if (hash_type == 1 && !h->salt_.empty() && EVP_DigestUpdate(h->base_, h->salt_.data(), h->salt_.size()) != 1)
    return IoError("OpenSSL digest update failed");
  return h;
}

Hasher::~Hasher() {
  EVP_MD_CTX_free(base_);
  EVP_MD_CTX_free(ctx_);
}

void Hasher::digest(std::span<const uint8_t> block, uint8_t* out) {
  unsigned n = 0;
  // Copying a context with the salt already absorbed saves a salt block per digest.
  if (EVP_MD_CTX_copy_ex(ctx_, base_) != 1 || EVP_DigestUpdate(ctx_, block.data(), block.size()) != 1 ||
      (hash_type_ == 0 && !salt_.empty() && EVP_DigestUpdate(ctx_, salt_.data(), salt_.size()) != 1) ||
      EVP_DigestFinal_ex(ctx_, out, &n) != 1)
    abort();  // cannot fail for a known digest with valid arguments
}

// ---- building ----

namespace {

uint8_t* entry_ptr(const Geometry& g, const Params& p, std::vector<uint8_t>& blocks, int level, uint64_t idx) {
  uint64_t blk = (g.level_start[level] - g.hash_start) + (idx >> g.hash_per_block_bits);
  uint64_t off = (idx & (g.hashes_per_block() - 1)) * g.entry_size;
  return blocks.data() + blk * p.hash_block_size + off;
}

// Hashes data blocks [0, n) into `out(idx)` pointers on `threads` threads,
// reading chunks of about 1 MiB.
Status hash_leaves(const Params& p, BlockDevice& data, unsigned threads,
                   const std::function<uint8_t*(uint64_t)>& out) {
  const uint64_t dbs = p.data_block_size;
  const uint64_t per_chunk = std::max<uint64_t>(1, (1u << 20) / dbs);
  const uint64_t chunks = (p.data_blocks + per_chunk - 1) / per_chunk;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<Status> errs(std::max(1u, threads));
  auto worker = [&](unsigned w) {
    auto h = Hasher::create(p.algorithm, p.hash_type, p.salt);
    if (!h.ok()) {
      errs[w] = h.status();
      failed = true;
      return;
    }
    std::vector<uint8_t> buf(per_chunk * dbs);
    while (!failed) {
      uint64_t c = next++;
      if (c >= chunks) break;
      uint64_t first = c * per_chunk, n = std::min(per_chunk, p.data_blocks - first);
      Status st = data.read(first * dbs, std::span(buf.data(), n * dbs));
      if (!st.ok()) {
        errs[w] = st.context(fmt::format("reading data block {}", first));
        failed = true;
        return;
      }
      for (uint64_t i = 0; i < n; i++) (*h)->digest(std::span(buf.data() + i * dbs, dbs), out(first + i));
    }
  };
  threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(std::min<uint64_t>(chunks, 256))));
  std::vector<std::thread> ts;
  for (unsigned w = 1; w < threads; w++) ts.emplace_back(worker, w);
  worker(0);
  for (auto& t : ts) t.join();
  for (auto& e : errs)
    if (!e.ok()) return e;
  return Status::Ok();
}

}  // namespace

Result<Tree> build_tree(const Params& p, BlockDevice& data, unsigned threads,
                        const std::function<void(uint64_t)>& progress) {
  UDM_ASSIGN_OR_RETURN(Geometry g, compute_geometry(p));
  if (data.size() / p.data_block_size < p.data_blocks)
    return Invalid(fmt::format("data device holds {} blocks of {} bytes, fewer than the {} to cover",
                               data.size() / p.data_block_size, p.data_block_size, p.data_blocks));
  Tree t;
  t.root.resize(g.digest_size);
  if (g.tree_blocks > SIZE_MAX / p.hash_block_size) return Invalid("tree too large for memory");
  t.blocks.assign(g.tree_blocks * p.hash_block_size, 0);
  if (g.levels == 0) {
    UDM_TRY(hash_leaves(p, data, 1, [&](uint64_t) { return t.root.data(); }));
  } else {
    UDM_TRY(hash_leaves(p, data, threads, [&](uint64_t i) { return entry_ptr(g, p, t.blocks, 0, i); }));
    UDM_ASSIGN_OR_RETURN(auto h, Hasher::create(p.algorithm, p.hash_type, p.salt));
    for (int l = 0; l + 1 < g.levels; l++)
      for (uint64_t b = 0; b < g.level_blocks[l]; b++) {
        const uint8_t* blk = t.blocks.data() + (g.level_start[l] - g.hash_start + b) * p.hash_block_size;
        h->digest(std::span(blk, p.hash_block_size), entry_ptr(g, p, t.blocks, l + 1, b));
      }
    const uint8_t* top = t.blocks.data() + (g.level_start[g.levels - 1] - g.hash_start) * p.hash_block_size;
    h->digest(std::span(top, p.hash_block_size), t.root.data());
  }
  if (progress) progress(p.data_blocks * p.data_block_size);
  return t;
}

namespace {
// A read-only view of memory, for build_tree_mem.
class SpanDevice : public BlockDevice {
 public:
  explicit SpanDevice(std::span<const uint8_t> d) : d_(d) {}
  uint64_t size() const override { return d_.size(); }

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override {
    memcpy(buf.data(), d_.data() + off, buf.size());
    return Status::Ok();
  }
  Status do_write(uint64_t, std::span<const uint8_t>, bool) override { return ReadOnly("read-only"); }
  Status do_flush() override { return Status::Ok(); }

 private:
  std::span<const uint8_t> d_;
};
}  // namespace

Result<Tree> build_tree_mem(const Params& p, std::span<const uint8_t> data, unsigned threads) {
  SpanDevice d(data);
  return build_tree(p, d, threads);
}

Result<VerifyResult> verify_tree(const Params& p, BlockDevice& data, BlockDevice& hash,
                                 std::span<const uint8_t> root, unsigned threads) {
  UDM_ASSIGN_OR_RETURN(Geometry g, compute_geometry(p));
  const uint64_t hbs = p.hash_block_size;
  if (root.size() != g.digest_size)
    return Invalid(fmt::format("root hash has {} bytes, {} needs {}", root.size(), p.algorithm, g.digest_size));
  if (data.size() / p.data_block_size < p.data_blocks)
    return Invalid(fmt::format("data device holds {} blocks, fewer than the {} to cover",
                               data.size() / p.data_block_size, p.data_blocks));
  if (hash.size() / hbs < g.end_block())
    return Invalid(fmt::format("hash device too small: {} bytes, the tree ends at {}", hash.size(), g.end_block() * hbs));
  if (g.tree_blocks > SIZE_MAX / hbs) return Invalid("tree too large for memory");
  std::vector<uint8_t> stored(g.tree_blocks * hbs);
  UDM_TRY(hash.read(g.hash_start * hbs, stored).context("reading the hash area"));
  VerifyResult r;
  UDM_ASSIGN_OR_RETURN(auto h, Hasher::create(p.algorithm, p.hash_type, p.salt));
  std::vector<uint8_t> computed;  // digests of the current level's inputs
  if (g.levels == 0) {
    std::vector<uint8_t> blk(p.data_block_size);
    UDM_TRY(data.read(0, blk));
    computed.resize(g.digest_size);
    h->digest(blk, computed.data());
  }
  for (int l = 0; l < g.levels; l++) {
    uint64_t inputs = l == 0 ? p.data_blocks : g.level_blocks[l - 1];
    computed.assign(inputs * g.digest_size, 0);
    if (l == 0) {
      UDM_TRY(hash_leaves(p, data, threads, [&](uint64_t i) { return computed.data() + i * g.digest_size; }));
    } else {
      for (uint64_t i = 0; i < inputs; i++)
        h->digest(std::span(stored.data() + (g.level_start[l - 1] - g.hash_start + i) * hbs, hbs),
                  computed.data() + i * g.digest_size);
    }
    auto input_pos = [&](uint64_t i) {
      return l == 0 ? i * p.data_block_size : (g.level_start[l - 1] + i) * hbs;
    };
    for (uint64_t b = 0; b < g.level_blocks[l]; b++) {
      uint64_t blk_abs = g.level_start[l] + b;
      const uint8_t* blk = stored.data() + (blk_abs - g.hash_start) * hbs;
      uint64_t first = b << g.hash_per_block_bits;
      uint64_t n = std::min(g.hashes_per_block(), inputs - first);
      for (uint64_t j = 0; j < n; j++) {
        const uint8_t* e = blk + j * g.entry_size;
        if (CRYPTO_memcmp(e, computed.data() + (first + j) * g.digest_size, g.digest_size) != 0) {
          r.code = VerifyResult::kCorrupt;
          r.message = fmt::format("Verification failed at position {}.", input_pos(first + j));
          return r;
        }
        if (g.entry_size > g.digest_size &&
            !all_zero(std::span(e + g.digest_size, g.entry_size - g.digest_size))) {
          r.code = VerifyResult::kCorrupt;
          r.message = fmt::format("Spare area is not zeroed at position {}.",
                                  blk_abs * hbs + j * g.entry_size + g.digest_size);
          return r;
        }
      }
      uint64_t used = n * g.entry_size;
      if (!all_zero(std::span(blk + used, hbs - used))) {
        r.code = VerifyResult::kCorrupt;
        r.message = fmt::format("Spare area is not zeroed at position {}.", blk_abs * hbs + used);
        return r;
      }
    }
  }
  std::vector<uint8_t> got(g.digest_size);
  if (g.levels == 0) {
    got = computed;
  } else {
    h->digest(std::span(stored.data() + (g.level_start[g.levels - 1] - g.hash_start) * hbs, hbs), got.data());
  }
  if (CRYPTO_memcmp(got.data(), root.data(), g.digest_size) != 0) {
    r.code = VerifyResult::kRootMismatch;
    r.message = "Verification of root hash failed.";
  }
  return r;
}

// ---- table line ----

Result<VerityLine> parse_table_args(const std::vector<std::string>& args) {
  TargetArgs a("verity", args);
  VerityLine t;
  Params& p = t.params;
  UDM_ASSIGN_OR_RETURN(uint64_t version, a.next_u64("<version>", 0, 1));
  p.hash_type = static_cast<uint32_t>(version);
  UDM_ASSIGN_OR_RETURN(t.data_dev, a.next("<data_dev>"));
  UDM_ASSIGN_OR_RETURN(t.hash_dev, a.next("<hash_dev>"));
  UDM_ASSIGN_OR_RETURN(uint64_t dbs, a.next_u64("<data_block_size>", 1, UINT32_MAX));
  if (!is_block_size_ok(dbs) || dbs > 4096)
    return a.error("<data_block_size>", fmt::format("{} is not a power of two from 512 to 4096 (the kernel refuses "
                                                    "data blocks larger than a page)",
                                                    dbs));
  UDM_ASSIGN_OR_RETURN(uint64_t hbs, a.next_u64("<hash_block_size>", 1, UINT32_MAX));
  if (!is_block_size_ok(hbs))
    return a.error("<hash_block_size>", fmt::format("{} is not a power of two from 512 to 512 KiB", hbs));
  p.data_block_size = static_cast<uint32_t>(dbs);
  p.hash_block_size = static_cast<uint32_t>(hbs);
  UDM_ASSIGN_OR_RETURN(p.data_blocks, a.next_u64("<num_data_blocks>", 1, (UINT64_MAX >> 20)));
  UDM_ASSIGN_OR_RETURN(p.hash_start, a.next_u64("<hash_start_block>", 0, UINT64_MAX / hbs - 1));
  UDM_ASSIGN_OR_RETURN(p.algorithm, a.next("<algorithm>"));
  UDM_ASSIGN_OR_RETURN(t.root_hex, a.next("<digest>"));
  UDM_ASSIGN_OR_RETURN(std::string salt, a.next("<salt>"));
  uint32_t ds = digest_size_of(p.algorithm);
  if (ds == 0 || p.algorithm.size() >= 32)
    return a.error("<algorithm>", fmt::format("'{}' is not a digest OpenSSL knows", p.algorithm));
  {
    auto r = from_hex(t.root_hex, "<digest>");
    if (!r.ok()) return r.status();
    if (r->size() != ds)
      return a.error("<digest>", fmt::format("{} hex digits, {} needs {}", t.root_hex.size(), p.algorithm, 2 * ds));
    t.root = std::move(*r);
  }
  if (salt != "-") {
    auto r = from_hex(salt, "<salt>");
    if (!r.ok()) return r.status();
    if (r->size() > kMaxSalt) return a.error("<salt>", fmt::format("{} bytes, at most {}", r->size(), kMaxSalt));
    p.salt = std::move(*r);
  }
  if (!a.empty()) {
    UDM_ASSIGN_OR_RETURN(uint64_t n, a.next_u64("<#opt_params>", 0, 64));
    if (n > a.remaining())
      return a.error("<#opt_params>", fmt::format("{} optional arguments announced, {} given", n, a.remaining()));
    bool mode_set = false, err_set = false;
    for (uint64_t i = 0; i < n; i++) {
      UDM_ASSIGN_OR_RETURN(std::string o, a.next("<opt>"));
      auto set_mode = [&](ErrorMode m) -> Status {
        if (mode_set && t.corruption != m) return a.error(o, "conflicting corruption handling options");
        mode_set = true;
        t.corruption = m;
        return Status::Ok();
      };
      if (o == "ignore_corruption") {
        UDM_TRY(set_mode(ErrorMode::kIgnore));
      } else if (o == "restart_on_corruption") {
        UDM_TRY(set_mode(ErrorMode::kRestart));
      } else if (o == "panic_on_corruption") {
        UDM_TRY(set_mode(ErrorMode::kPanic));
      } else if (o == "restart_on_error" || o == "panic_on_error") {
        bool restart = o == "restart_on_error";
        if (err_set && t.restart_on_error != restart) return a.error(o, "conflicting error handling options");
        err_set = true;
        t.restart_on_error = restart;
        t.panic_on_error = !restart;
      } else if (o == "ignore_zero_blocks") {
        t.ignore_zero_blocks = true;
      } else if (o == "check_at_most_once") {
        t.check_at_most_once = true;
      } else if (o == "try_verify_in_tasklet") {
        t.try_verify_in_tasklet = true;
      } else if (o == "root_hash_sig_key_desc" || o == "root_hash_sig") {
        if (i + 1 >= n) return a.error(o, "needs a value");
        UDM_ASSIGN_OR_RETURN(std::string v, a.next(o));
        i++;
        if (v.empty()) return a.error(o, "empty value");
        std::string& dst = o == "root_hash_sig" ? t.sig_file : t.sig_key_desc;
        if (!dst.empty()) return a.error(o, "given twice");
        dst = v;
      } else if (o == "use_fec_from_device" || o == "fec_roots" || o == "fec_blocks" || o == "fec_start") {
        return Status::Error(EOPNOTSUPP, fmt::format("verity: {}: forward error correction (FEC) is not supported "
                                                     "by udm's verity target; remove the FEC options",
                                                     o));
      } else {
        return a.error(o, "unknown option (known: ignore_corruption restart_on_corruption panic_on_corruption "
                          "restart_on_error panic_on_error ignore_zero_blocks check_at_most_once "
                          "try_verify_in_tasklet root_hash_sig_key_desc <desc> root_hash_sig <file.p7s>)");
      }
    }
    UDM_TRY(a.done());
  }
  if (!t.sig_key_desc.empty() && !t.sig_file.empty())
    return Invalid("verity: root_hash_sig_key_desc and root_hash_sig are exclusive");
  UDM_TRY(compute_geometry(p).status().context("verity"));
  return t;
}

std::string format_table_args(const VerityLine& t) {
  const Params& p = t.params;
  std::string s = fmt::format("{} {} {} {} {} {} {} {} {} {}", p.hash_type, t.data_dev, t.hash_dev, p.data_block_size,
                              p.hash_block_size, p.data_blocks, p.hash_start, p.algorithm, to_hex(t.root),
                              p.salt.empty() ? std::string("-") : to_hex(p.salt));
  std::vector<std::string> o;
  if (t.corruption == ErrorMode::kIgnore) o.push_back("ignore_corruption");
  if (t.corruption == ErrorMode::kRestart) o.push_back("restart_on_corruption");
  if (t.corruption == ErrorMode::kPanic) o.push_back("panic_on_corruption");
  if (t.restart_on_error) o.push_back("restart_on_error");
  if (t.panic_on_error) o.push_back("panic_on_error");
  if (t.ignore_zero_blocks) o.push_back("ignore_zero_blocks");
  if (t.check_at_most_once) o.push_back("check_at_most_once");
  if (t.try_verify_in_tasklet) o.push_back("try_verify_in_tasklet");
  if (!t.sig_key_desc.empty()) {
    o.push_back("root_hash_sig_key_desc");
    o.push_back(t.sig_key_desc);
  }
  if (!t.sig_file.empty()) {
    o.push_back("root_hash_sig");
    o.push_back(t.sig_file);
  }
  if (!o.empty()) {
    s += fmt::format(" {}", o.size());
    for (auto& x : o) s += " " + x;
  }
  return s;
}

}  // namespace udm::verity
