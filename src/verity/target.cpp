#include "verity/target.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "util/log.h"
#include "verity/hash_pool.h"
#include "verity/signature.h"

namespace udm::verity {

namespace {
constexpr uint64_t kBatchBytes = 1u << 20;  // data read per lower request
constexpr uint64_t kMaxLogged = 100;        // as the kernel: the first 100 corruptions are logged
constexpr uint64_t kTaskBytes = 128u << 10; // data hashed per pool task (a batch of 2+ tasks goes parallel)

const char* mode_name(const VerityLine& t) {
  switch (t.corruption) {
    case ErrorMode::kRestart: return "restart_on_corruption";
    case ErrorMode::kPanic: return "panic_on_corruption";
    default: return t.restart_on_error ? "restart_on_error" : "panic_on_error";
  }
}
}  // namespace

Result<std::shared_ptr<VerityTarget>> VerityTarget::create(VerityLine t, DevicePtr data, DevicePtr hash,
                                                           uint64_t length, std::string name, std::string sig) {
  UDM_ASSIGN_OR_RETURN(Geometry g, compute_geometry(t.params));
  const Params& p = t.params;
  if (length == 0 || length % 512) return Invalid(fmt::format("verity: segment length {} is not a multiple of 512", length));
  if (length > p.data_blocks * p.data_block_size)
    return Invalid(fmt::format("verity: segment of {} bytes is longer than the {} data blocks of {} bytes covered",
                               length, p.data_blocks, p.data_block_size));
  if (data->size() / p.data_block_size < p.data_blocks)
    return Invalid(fmt::format("verity: data device has {} bytes, fewer than {} blocks of {}", data->size(),
                               p.data_blocks, p.data_block_size));
  if (hash->size() / p.hash_block_size < g.end_block())
    return Invalid(fmt::format("verity: hash device too small: {} bytes, the tree ends at byte {} (hash_start {} + {} "
                               "blocks of {})",
                               hash->size(), g.end_block() * p.hash_block_size, p.hash_start, g.tree_blocks,
                               p.hash_block_size));
  std::shared_ptr<VerityTarget> v(new VerityTarget());
  v->t_ = std::move(t);
  v->g_ = std::move(g);
  v->data_ = std::move(data);
  v->hash_ = std::move(hash);
  v->length_ = length;
  v->name_ = std::move(name);
  v->sig_ = std::move(sig);
  const Params& vp = v->t_.params;
  v->cache_ = BlockCache::shared();
  v->owner_ = BlockCache::new_owner();
  UDM_ASSIGN_OR_RETURN(auto h, Hasher::create(vp.algorithm, vp.hash_type, vp.salt));
  if (v->t_.ignore_zero_blocks) {
    std::vector<uint8_t> zero(vp.data_block_size, 0);
    v->zero_digest_.resize(h->digest_size());
    h->digest(zero, v->zero_digest_.data());
  }
  v->give_hasher(std::move(h));
  if (v->t_.check_at_most_once) {
    uint64_t words = (vp.data_blocks + 63) / 64;
    v->once_.reset(new std::atomic<uint64_t>[words]);
    for (uint64_t i = 0; i < words; i++) v->once_[i] = 0;
  }
  return v;
}

VerityTarget::~VerityTarget() {
  if (cache_) cache_->drop_owner(owner_);
}

DeviceCaps VerityTarget::caps() const {
  DeviceCaps c = ReadOnlyTarget::caps();
  c.logical_block = 512;  // reads are widened to whole data blocks inside
  c.physical_block = t_.params.data_block_size;
  return c;
}

std::string VerityTarget::status() const {
  uint64_t lk = lookups_, ld = loads_;
  return fmt::format("{} - verified={} corrupt={} cache={}/{} sig={}{}", hash_failed_ ? 'C' : 'V', verified_.load(),
                     corrupt_.load(), lk > ld ? lk - ld : 0, ld, sig_, latched_ ? " latched" : "");
}

Result<std::string> VerityTarget::message(const std::vector<std::string>& args) {
  if (args.size() == 1 && args[0] == "reset-counters") {
    verified_ = 0;
    corrupt_ = 0;
    lookups_ = 0;
    loads_ = 0;
    return std::string();
  }
  if (args.size() == 1 && args[0] == "drop-cache") {
    cache_->drop_owner(owner_);
    return std::string();
  }
  return Invalid("verity: messages: reset-counters | drop-cache");
}

std::unique_ptr<Hasher> VerityTarget::take_hasher() {
  {
    std::lock_guard l(pool_mu_);
    if (!pool_.empty()) {
      auto h = std::move(pool_.back());
      pool_.pop_back();
      return h;
    }
  }
  auto h = Hasher::create(t_.params.algorithm, t_.params.hash_type, t_.params.salt);
  if (!h.ok()) abort();  // the same parameters succeeded in create()
  return std::move(*h);
}

void VerityTarget::give_hasher(std::unique_ptr<Hasher> h) {
  std::lock_guard l(pool_mu_);
  if (pool_.size() < 64) pool_.push_back(std::move(h));
}

Status VerityTarget::corruption(const char* type, uint64_t block) {
  hash_failed_ = true;
  corrupt_++;
  if (logged_++ < kMaxLogged)
    log::error("verity {}: {} block {} is corrupted (DM_VERITY_ERR_BLOCK_NR={},{})", name_, type, block,
               type[0] == 'd' ? 0 : 1, block);
  switch (t_.corruption) {
    case ErrorMode::kIgnore: return Status::Ok();
    case ErrorMode::kRestart:
    case ErrorMode::kPanic:
      if (!latched_.exchange(true))
        log::error("verity {}: {}: device latched, every read fails from now on (udm does not reboot the host)",
                   name_, mode_name(t_));
      break;
    case ErrorMode::kEio: break;
  }
  return IoError(fmt::format("verity: {} block {} is corrupted", type, block));
}

Status VerityTarget::io_error(Status st) {
  if ((t_.restart_on_error || t_.panic_on_error) && !latched_.exchange(true))
    log::error("verity {}: I/O error with {}: device latched ({})", name_, mode_name(t_), st.message());
  return IoError(st.message());
}

Result<BlockCache::Block> VerityTarget::hash_block(int level, uint64_t index) {
  const uint64_t abs = g_.level_start[level] + index;
  const uint32_t hbs = t_.params.hash_block_size;
  lookups_++;
  return cache_->get(owner_, abs, [&]() -> Result<std::vector<uint8_t>> {
    loads_++;
    std::vector<uint8_t> blk(hbs);
    Status st = hash_->read(abs * hbs, blk);
    if (!st.ok()) return io_error(st.context(fmt::format("verity: reading hash block {}", abs)));
    std::vector<uint8_t> want(g_.digest_size), got(g_.digest_size);
    if (level == g_.levels - 1) {
      memcpy(want.data(), t_.root.data(), g_.digest_size);
    } else {
      UDM_ASSIGN_OR_RETURN(auto parent, hash_block(level + 1, index >> g_.hash_per_block_bits));
      memcpy(want.data(), parent->data() + (index & (g_.hashes_per_block() - 1)) * g_.entry_size, g_.digest_size);
    }
    auto h = take_hasher();
    h->digest(blk, got.data());
    give_hasher(std::move(h));
    if (CRYPTO_memcmp(want.data(), got.data(), g_.digest_size) != 0) UDM_TRY(corruption("metadata", abs));
    return blk;
  });
}

Status VerityTarget::verify_blocks(uint64_t first, uint64_t n, uint8_t* data) {
  const uint32_t dbs = t_.params.data_block_size;
  const uint32_t ds = g_.digest_size;
  std::vector<uint8_t> want(n * ds);
  std::vector<uint8_t> skip(n, 0);  // 1: zero block (not read), 2: verified before (check_at_most_once)
  // The wanted digests, one cache lookup per leaf hash block (not per data block).
  BlockCache::Block leaf;
  uint64_t leaf_index = UINT64_MAX;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t b = first + i;
    if (once_ && (once_[b / 64].load(std::memory_order_relaxed) >> (b % 64) & 1)) {
      skip[i] = 2;
      continue;
    }
    uint8_t* w = want.data() + i * ds;
    if (g_.levels == 0) {
      memcpy(w, t_.root.data(), ds);
    } else {
      uint64_t li = b >> g_.hash_per_block_bits;
      if (li != leaf_index) {
        UDM_ASSIGN_OR_RETURN(leaf, hash_block(0, li));
        leaf_index = li;
      }
      memcpy(w, leaf->data() + (b & (g_.hashes_per_block() - 1)) * g_.entry_size, ds);
    }
    if (!zero_digest_.empty() && memcmp(w, zero_digest_.data(), ds) == 0) skip[i] = 1;
  }
  leaf.reset();
  // Read each run of blocks that needs reading in one request, straight into the caller's buffer.
  for (uint64_t i = 0; i < n;) {
    if (skip[i] == 1) {
      memset(data + i * dbs, 0, dbs);
      i++;
      continue;
    }
    uint64_t j = i;
    while (j < n && skip[j] != 1) j++;
    Status st = data_->read((first + i) * dbs, std::span(data + i * dbs, (j - i) * dbs));
    if (!st.ok()) return io_error(st.context(fmt::format("verity: reading data blocks {}..{}", first + i, first + j - 1)));
    i = j;
  }
  // Hash: large batches are split over the hashing pool (the caller takes part).
  std::vector<uint8_t> bad(n, 0);
  auto hash_range = [&](uint64_t lo, uint64_t hi) {
    auto h = take_hasher();
    uint8_t got[EVP_MAX_MD_SIZE];
    for (uint64_t i = lo; i < hi; i++) {
      if (skip[i]) continue;
      h->digest(std::span(data + i * dbs, dbs), got);
      bad[i] = CRYPTO_memcmp(got, want.data() + i * ds, ds) != 0;
    }
    give_hasher(std::move(h));
  };
  const uint64_t per_task = std::max<uint64_t>(1, kTaskBytes / dbs);
  if (n >= 2 * per_task) {
    const uint64_t tasks = (n + per_task - 1) / per_task;
    HashPool::get().run(static_cast<unsigned>(tasks), [&](unsigned k) {
      hash_range(k * per_task, std::min<uint64_t>(n, (k + 1) * per_task));
    });
  } else {
    hash_range(0, n);
  }
  // Account in block order, as a sequential pass would.
  uint64_t ok = 0;
  Status result;
  for (uint64_t i = 0; i < n && result.ok(); i++) {
    if (skip[i]) continue;
    uint64_t b = first + i;
    if (bad[i]) {
      result = corruption("data", b);
      continue;
    }
    ok++;
    if (once_) once_[b / 64].fetch_or(uint64_t{1} << (b % 64), std::memory_order_relaxed);
  }
  verified_ += ok;
  return result;
}

Status VerityTarget::do_read(uint64_t off, std::span<uint8_t> buf) {
  if (buf.empty()) return Status::Ok();
  if (latched_) return IoError(fmt::format("verity: device latched after corruption ({})", mode_name(t_)));
  const uint64_t dbs = t_.params.data_block_size;
  const uint64_t per_batch = std::max<uint64_t>(1, kBatchBytes / dbs);
  uint64_t first = off / dbs, last = (off + buf.size() - 1) / dbs;
  std::vector<uint8_t> tmp;
  for (uint64_t b = first; b <= last; b += per_batch) {
    uint64_t n = std::min(per_batch, last - b + 1);
    uint64_t lo = b * dbs, hi = (b + n) * dbs;  // bytes of this batch
    uint64_t clo = std::max(lo, off), chi = std::min(hi, off + buf.size());
    uint8_t* dst;
    bool direct = clo == lo && chi == hi;
    if (direct) {
      dst = buf.data() + (lo - off);
    } else {
      tmp.resize(n * dbs);
      dst = tmp.data();
    }
    UDM_TRY(verify_blocks(b, n, dst));
    if (latched_) return IoError(fmt::format("verity: device latched after corruption ({})", mode_name(t_)));
    if (!direct) memcpy(buf.data() + (clo - off), tmp.data() + (clo - lo), chi - clo);
  }
  return Status::Ok();
}

Status VerityTarget::do_allocation(uint64_t off, uint64_t len, AllocMap& out) {
  if (zero_digest_.empty()) return ReadOnlyTarget::do_allocation(off, len, out);
  if (latched_) return IoError(fmt::format("verity: device latched after corruption ({})", mode_name(t_)));
  const uint64_t dbs = t_.params.data_block_size;
  const uint32_t ds = g_.digest_size;
  // At most 64 Ki data blocks per call (a prefix is a valid answer).
  const uint64_t first = off / dbs, last = std::min((off + len - 1) / dbs, first + (1 << 16) - 1);
  const uint64_t end = std::min(off + len, (last + 1) * dbs);
  BlockCache::Block leaf;
  uint64_t leaf_index = UINT64_MAX;
  uint64_t pos = off;
  for (uint64_t b = first; b <= last; b++) {
    const uint8_t* w;
    if (g_.levels == 0) {
      w = t_.root.data();
    } else {
      uint64_t li = b >> g_.hash_per_block_bits;
      if (li != leaf_index) {
        UDM_ASSIGN_OR_RETURN(leaf, hash_block(0, li));
        leaf_index = li;
      }
      w = leaf->data() + (b & (g_.hashes_per_block() - 1)) * g_.entry_size;
    }
    if (latched_) return IoError(fmt::format("verity: device latched after corruption ({})", mode_name(t_)));
    bool zero = memcmp(w, zero_digest_.data(), ds) == 0;
    uint64_t n = std::min(end, (b + 1) * dbs) - pos;
    add_alloc_run(out, n, zero ? AllocKind::kZero : AllocKind::kData);
    pos += n;
  }
  return Status::Ok();
}

Result<TargetPtr> make_verity(const TargetParams& p) {
  UDM_ASSIGN_OR_RETURN(VerityLine t, parse_table_args(p.args));
  // Signature first: a refused table opens nothing.
  std::string sig = "none";
  std::vector<uint8_t> sig_bytes;
  if (!t.sig_key_desc.empty()) {
    auto k = read_user_key(t.sig_key_desc);
    if (!k.ok()) return k.status().context("verity: root_hash_sig_key_desc");
    sig_bytes = std::move(*k);
  } else if (!t.sig_file.empty()) {
    std::ifstream f(t.sig_file, std::ios::binary);
    if (!f) return Status::Error(ENOKEY, fmt::format("verity: root_hash_sig: cannot read {}", t.sig_file));
    sig_bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  if (!t.sig_key_desc.empty() || !t.sig_file.empty()) {
    UDM_TRY(verify_root_signature(sig_bytes, t.root_hex, {}).context("verity"));
    sig = "verified";
  } else if (sig_policy().require_signatures) {
    return Status::Error(EKEYREJECTED, "verity: the daemon requires signed root hashes (--require-signatures); "
                                       "add root_hash_sig_key_desc <desc> or root_hash_sig <file.p7s>");
  }
  UDM_ASSIGN_OR_RETURN(DevicePtr data, p.resolver->open(t.data_dev, false));
  DevicePtr hash;
  if (t.hash_dev == t.data_dev) {
    hash = data;
  } else {
    UDM_ASSIGN_OR_RETURN(hash, p.resolver->open(t.hash_dev, false));
  }
  UDM_ASSIGN_OR_RETURN(auto v, VerityTarget::create(std::move(t), data, hash, p.length, p.device_name, sig));
  return TargetPtr(v);
}

}  // namespace udm::verity
