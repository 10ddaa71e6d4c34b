#include "bow/restore.h"

#include <fmt/format.h>

#include <charconv>
#include <map>
#include <unordered_map>

namespace udm::bow {

std::string to_string(EntryId id) { return fmt::format("{}:{}", id.sequence, id.index); }

Result<std::set<EntryId>> parse_entry_ids(const std::string& s) {
  std::set<EntryId> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t colon = item.find(':');
    EntryId id{};
    auto num = [](std::string_view v, uint32_t& x) {
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
      return ec == std::errc() && p == v.data() + v.size() && !v.empty();
    };
    if (colon == std::string::npos || !num(std::string_view(item).substr(0, colon), id.sequence) ||
        !num(std::string_view(item).substr(colon + 1), id.index))
      return Invalid(fmt::format("bad entry id '{}': expected SEQ:IDX as printed by bow-restore", item));
    out.insert(id);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

uint64_t Chain::bytes() const {
  uint64_t n = 0;
  for (const auto& s : steps) n += s.entry.size;
  return n;
}

namespace {

// Where each block's bytes are once the restore has made the copies so far
// (logical block -> physical block; identity unless remapped).
class BlockRemap {
 public:
  uint64_t operator()(uint64_t block) const {
    auto it = map_.find(block);
    return it == map_.end() ? block : it->second;
  }
  // The restore copies dest -> source: afterwards source reads what dest read.
  void copy(uint64_t src_block, uint64_t dest_block, uint64_t n) {
    std::vector<uint64_t> phys(n);
    for (uint64_t j = 0; j < n; j++) phys[j] = (*this)(dest_block + j);
    for (uint64_t j = 0; j < n; j++) {
      if (phys[j] == src_block + j) map_.erase(src_block + j);
      else map_[src_block + j] = phys[j];
    }
  }

 private:
  std::unordered_map<uint64_t, uint64_t> map_;
};

Status read_remapped(BlockDevice& dev, const BlockRemap& r, uint64_t block, uint64_t n, uint32_t bs,
                     std::vector<uint8_t>& out) {
  out.resize(n * bs);
  // Coalesce physically contiguous blocks into one read.
  uint64_t j = 0;
  while (j < n) {
    uint64_t p = r(block + j), k = 1;
    while (j + k < n && r(block + j + k) == p + k && k < 256) k++;
    UDM_TRY(dev.read(p * bs, std::span<uint8_t>(out.data() + j * bs, k * bs)));
    j += k;
  }
  return Status::Ok();
}

}  // namespace

Result<Chain> read_chain(BlockDevice& dev, const ChainOptions& opts) {
  const uint64_t dev_bytes = dev.size();
  std::vector<uint8_t> buf(std::min<uint64_t>(kMaxBlock, dev_bytes));
  UDM_TRY(dev.read(0, buf));
  if (!has_log_magic(buf))
    return Status::Error(ENOENT,
                         "no bow log in block 0 (the device was never checkpointed, or it was "
                         "already committed or restored)");
  auto first = decode_log(buf, dev_bytes);
  if (!first.ok()) return first.status().context("block 0");
  LogBlock log = std::move(first.value());
  if (log.committing && !opts.allow_committing)
    return Status::Error(
        EBUSY,
        "block 0 holds a bow log marked as being committed (a commit was interrupted): the saved "
        "copies are being erased, so the device can no longer be rolled back; create the bow "
        "target over it and the commit is finished");
  Chain chain;
  chain.committing = log.committing;
  chain.block_size = log.block_size;
  chain.sector0 = log.sector0;
  chain.intent = log.intent;
  chain.newest_sequence = log.sequence;
  const uint32_t bs = log.block_size;
  const uint64_t bsec = bs / 512;
  BlockRemap remap;
  std::map<uint64_t, uint64_t> dests;  // block ranges used as dest: start -> end
  std::vector<std::string> problems;
  std::vector<uint8_t> data;
  for (;;) {
    bool chain_cut = false;
    for (uint32_t i = static_cast<uint32_t>(log.entries.size()); i-- > 0;) {
      const LogEntry& e = log.entries[i];
      EntryId id{log.sequence, i};
      uint64_t src = e.source / bsec, dst = e.dest / bsec, n = e.size / bs;
      std::string problem;
      auto it = dests.upper_bound(dst);
      bool overlap = (it != dests.end() && it->first < dst + n) ||
                     (it != dests.begin() && std::prev(it)->second > dst);
      if (overlap) problem = "its dest overlaps another entry's dest";
      bool checked = false;
      if (problem.empty() && opts.verify && e.checksum != 0) {
        UDM_TRY(read_remapped(dev, remap, dst, n, bs, data));
        uint32_t crc = entry_checksum(src, data);
        if (crc != e.checksum)
          problem = fmt::format("checksum mismatch (log says {:#010x}, saved data gives {:#010x})",
                                e.checksum, crc);
        checked = true;
      }
      if (!problem.empty()) {
        if (opts.skip.count(id)) {
          chain.skipped.push_back(id);
          if (i == 0 && log.sequence > 0) chain_cut = true;
          continue;
        }
        problems.push_back(fmt::format("entry {} (restore {} bytes at byte {} from byte {}): {}",
                                       to_string(id), e.size, e.source * 512, e.dest * 512, problem));
        if (i == 0 && log.sequence > 0) chain_cut = true;
        continue;
      }
      dests[dst] = dst + n;
      remap.copy(src, dst, n);
      chain.steps.push_back({id, e, checked});
    }
    if (log.sequence == 0) break;
    if (chain_cut) {
      if (!problems.empty()) break;
      chain.complete = false;
      break;
    }
    // The previous log block is what block 0 holds once this log is restored.
    std::vector<uint8_t> prev;
    chain.log_blocks.push_back(remap(0));
    UDM_TRY(read_remapped(dev, remap, 0, 1, bs, prev));
    auto older = decode_log(prev, dev_bytes);
    std::string why;
    if (!older.ok()) why = older.status().message();
    else if (older.value().sequence != log.sequence - 1)
      why = fmt::format("it has sequence {}, expected {}", older.value().sequence, log.sequence - 1);
    else if (older.value().block_size != bs)
      why = fmt::format("its block size {} differs from {}", older.value().block_size, bs);
    else if (older.value().committing)
      why = "it carries the commit mark (only block 0 may)";
    if (!why.empty() && opts.tolerant) {
      chain.complete = false;
      break;
    }
    if (!why.empty()) {
      problems.push_back(fmt::format("log block {} (saved by entry {}:0): {}", log.sequence - 1,
                                     log.sequence, why));
      break;
    }
    log = std::move(older.value());
  }
  if (!problems.empty()) {
    std::string msg = fmt::format("bow log chain is damaged ({} problem{}):", problems.size(),
                                  problems.size() == 1 ? "" : "s");
    for (const auto& p : problems) msg += "\n  " + p;
    msg += "\nnothing was written; to restore everything else, name the bad entries with "
           "--force SEQ:IDX[,SEQ:IDX...]";
    return Corrupt(msg);
  }
  return chain;
}

Status apply_chain(BlockDevice& dev, const Chain& chain,
                   const std::function<void(uint64_t)>& progress) {
  const uint32_t bs = chain.block_size;
  std::vector<uint8_t> buf;
  uint64_t done = 0;
  // Restoring block 0 last (entry 0:0) is the step that ends the checkpoint.
  bool block0_restored = false;
  for (const auto& step : chain.steps) {
    const LogEntry& e = step.entry;
    if (e.source == 0) {
      UDM_TRY(dev.flush());  // everything newer is durable before block 0 changes
      block0_restored = step.id.sequence == 0;
    }
    uint64_t off = 0;
    while (off < e.size) {
      uint64_t n = std::min<uint64_t>(e.size - off, 1u << 20);
      buf.resize(n);
      UDM_TRY(dev.read(e.dest * 512 + off, buf));
      UDM_TRY(dev.write(e.source * 512 + off, buf));
      off += n;
    }
    done += e.size;
    if (progress) progress(done);
  }
  if (!block0_restored) {
    // Forced, incomplete restore: the original block 0 is lost; put the live
    // one back so block 0 no longer holds a log.
    UDM_TRY(dev.flush());
    buf.resize(bs);
    UDM_TRY(dev.read(chain.sector0 * 512, buf));
    UDM_TRY(dev.write(0, buf));
  }
  UDM_TRY(dev.flush());
  // Block 0 is home and the log gone: zero what bow put in free space.
  const uint64_t bsec = bs / 512;
  std::map<uint64_t, uint64_t> zero;  // blocks: start -> end
  auto add = [&](uint64_t sector, uint64_t bytes) {
    uint64_t a = sector / bsec, e = a + bytes / bs;
    if (a == 0 || e * bs > dev.size() || a >= e) return;
    auto [it, fresh] = zero.emplace(a, e);
    if (!fresh) it->second = std::max(it->second, e);
  };
  for (const auto& step : chain.steps) add(step.entry.dest, step.entry.size);
  add(chain.sector0, bs);
  if (chain.intent != 0 && (chain.intent / bsec + 1) * bs <= dev.size()) {
    add(chain.intent, bs);
    buf.resize(bs);
    if (dev.read(chain.intent * 512, buf).ok()) {
      auto listed = decode_intent(buf, bs, dev.size());
      if (listed.ok())
        for (const auto& r : listed.value()) add(r.sector, r.bytes);
    }
  }
  uint64_t end = 0;
  for (const auto& [a, e] : zero) {
    uint64_t from = std::max(a, end);
    if (from < e) UDM_TRY(dev.write_zeroes(from * bs, (e - from) * bs, false, true));
    end = std::max(end, e);
  }
  return dev.flush();
}

}  // namespace udm::bow
